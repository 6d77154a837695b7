"""Real architectures edge users deploy, as plain torch code (random weights, fixed seeds; nothing
is downloaded), at their real input sizes and at a reduced size for tests.

Each entry is faithful to the architecture's structure (the op patterns a compiler meets):
ResNet-50 bottlenecks, MobileNetV2 inverted residuals, MobileNetV3 hard-swish + squeeze-excite,
EfficientNet-B0 SiLU + SE, ShuffleNetV2 split + channel shuffle, SqueezeNet fire concat,
DenseNet dense concat, Inception branch concat, VGG, a YOLO-style detector (upsample + concat,
two outputs), a U-Net (ConvTranspose, Resize, skip concat), a ViT-tiny, a BERT-tiny encoder
(Gather embeddings, LayerNorm, GELU, Softmax attention) and a GRU.

    build_arch("shufflenetv2", small=True) -> (module, example input)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride):
        super().__init__()
        cout = mid * 4
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride),
                                  conv_bn(mid, cout, 1, act=None))
        self.down = (conv_bn(cin, cout, 1, stride, act=None)
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.down(x))


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000, blocks=(3, 4, 6, 3)):
        super().__init__()
        layers = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, n in enumerate(blocks):
            mid = 64 * 2 ** i
            for j in range(n):
                layers.append(Bottleneck(cin, mid, 2 if j == 0 and i > 0 else 1))
                cin = mid * 4
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 / V3 / EfficientNet block: expand, depthwise, [SE], project."""

    def __init__(self, cin, cout, k, stride, expand, act=nn.ReLU6, se=False, se_act=nn.ReLU,
                 gate=nn.Sigmoid):
        super().__init__()
        hidden = cin * expand
        self.res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hidden, 1, act=act)] if expand != 1 else []
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, cin // 4), se_act, gate))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.res else y


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze, act, gate):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class MobileNet(nn.Module):
    """cfg rows: (kernel, expand, cout, se, act, stride, repeats)."""

    def __init__(self, cfg, stem=32, head=1280, stem_act=nn.ReLU6, gate=nn.Sigmoid,
                 num_classes=1000):
        super().__init__()
        layers = [conv_bn(3, stem, 3, 2, act=stem_act)]
        cin = stem
        for k, e, c, se, act, s, n in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, k, s if i == 0 else 1, e, act, se,
                                               gate=gate))
                cin = c
        layers.append(conv_bn(cin, head, 1, act=stem_act))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


R6, HS, SI = nn.ReLU6, nn.Hardswish, nn.SiLU
MOBILENETV2 = [(3, 1, 16, False, R6, 1, 1), (3, 6, 24, False, R6, 2, 2), (3, 6, 32, False, R6, 2, 3),
               (3, 6, 64, False, R6, 2, 4), (3, 6, 96, False, R6, 1, 3),
               (3, 6, 160, False, R6, 2, 3), (3, 6, 320, False, R6, 1, 1)]
MOBILENETV3_SMALL = [(3, 1, 16, True, nn.ReLU, 2, 1), (3, 4, 24, False, nn.ReLU, 2, 1),
                     (3, 3, 24, False, nn.ReLU, 1, 1), (5, 4, 40, True, HS, 2, 3),
                     (5, 3, 48, True, HS, 1, 2), (5, 6, 96, True, HS, 2, 3)]
EFFICIENTNET_B0 = [(3, 1, 16, True, SI, 1, 1), (3, 6, 24, True, SI, 2, 2),
                   (5, 6, 40, True, SI, 2, 2), (3, 6, 80, True, SI, 2, 3),
                   (5, 6, 112, True, SI, 1, 3), (5, 6, 192, True, SI, 2, 4),
                   (3, 6, 320, True, SI, 1, 1)]


def channel_shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=None),
                                      conv_bn(cin, half, 1))
        right_in = cin if stride == 2 else half
        self.right = nn.Sequential(conv_bn(right_in, half, 1),
                                   conv_bn(half, half, 3, stride, groups=half, act=None),
                                   conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(116, 232, 464), repeats=(4, 8, 4), num_classes=1000):
        super().__init__()
        layers = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 24
        for c, n in zip(widths, repeats, strict=True):
            for i in range(n):
                layers.append(ShuffleBlock(cin, c, 2 if i == 0 else 1))
                cin = c
        layers.append(conv_bn(cin, 1024, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean([2, 3]))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.s = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, 1, 1)

    def forward(self, x):
        s = F.relu(self.s(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64), Fire(128, 16, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128), Fire(256, 32, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256))
        self.classifier = nn.Sequential(nn.Conv2d(512, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                  nn.Conv2d(4 * growth, growth, 3, 1, 1))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth=32, num_classes=1000):
        super().__init__()
        layers = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1),
                           nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class InceptionBlock(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
        self.b5 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3), conv_bn(c5, c5, 3))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class Inception(nn.Module):
    """GoogLeNet-style: a stem and inception blocks (branch concat)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), conv_bn(64, 192, 3), nn.MaxPool2d(3, 2, 1),
            InceptionBlock(192, 64, 96, 128, 16, 32, 32),
            InceptionBlock(256, 128, 128, 192, 32, 96, 64), nn.MaxPool2d(3, 2, 1),
            InceptionBlock(480, 192, 96, 208, 16, 48, 64),
            InceptionBlock(512, 256, 160, 320, 32, 128, 128))
        self.fc = nn.Linear(832, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class VGG(nn.Module):
    def __init__(self, cfg=(64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
                 num_classes=1000):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 7)
        return self.fc(torch.flatten(x, 1))


class YoloLike(nn.Module):
    """A YOLO-style detector: strided CSP-ish backbone, SiLU, an FPN neck (upsample + concat),
    two detection heads (two outputs)."""

    def __init__(self, anchors=3, classes=20):
        super().__init__()
        a = lambda ci, co, s=1: conv_bn(ci, co, 3, s, act=nn.SiLU)  # noqa: E731
        self.stem = nn.Sequential(a(3, 16, 2), a(16, 32, 2), a(32, 32))
        self.c3 = nn.Sequential(a(32, 64, 2), a(64, 64))
        self.c4 = nn.Sequential(a(64, 128, 2), a(128, 128))
        self.c5 = nn.Sequential(a(128, 256, 2), a(256, 256))
        self.lat = conv_bn(256, 128, 1, act=nn.SiLU)
        self.fuse = a(256, 128)
        out = anchors * (5 + classes)
        self.head_big, self.head_small = nn.Conv2d(128, out, 1), nn.Conv2d(256, out, 1)

    def forward(self, x):
        c4 = self.c4(self.c3(self.stem(x)))
        c5 = self.c5(c4)
        up = F.interpolate(self.lat(c5), scale_factor=2.0, mode="nearest")
        p4 = self.fuse(torch.cat([up, c4], 1))
        return self.head_big(p4), self.head_small(c5)


class UNet(nn.Module):
    def __init__(self, base=16, classes=2):
        super().__init__()
        dbl = lambda ci, co: nn.Sequential(conv_bn(ci, co), conv_bn(co, co))  # noqa: E731
        self.d1, self.d2, self.d3 = dbl(3, base), dbl(base, 2 * base), dbl(2 * base, 4 * base)
        self.mid = dbl(4 * base, 8 * base)
        self.up3 = nn.ConvTranspose2d(8 * base, 4 * base, 2, 2)
        self.u3 = dbl(8 * base, 4 * base)
        self.up2 = nn.ConvTranspose2d(4 * base, 2 * base, 2, 2)
        self.u2 = dbl(4 * base, 2 * base)
        self.u1 = dbl(3 * base, base)  # Resize upsampling on the last level
        self.out = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        d1 = self.d1(x)
        d2 = self.d2(F.max_pool2d(d1, 2))
        d3 = self.d3(F.max_pool2d(d2, 2))
        m = self.mid(F.max_pool2d(d3, 2))
        u3 = self.u3(torch.cat([self.up3(m), d3], 1))
        u2 = self.u2(torch.cat([self.up2(u3), d2], 1))
        u1 = self.u1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="bilinear",
                                              align_corners=False), d1], 1))
        return self.out(u1)


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def attend(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x):  # pre-norm (ViT); BERT below uses post-norm
        x = x + self.attend(self.ln1(x))
        return x + self.ff(self.ln2(x))


class ViTTiny(nn.Module):
    def __init__(self, image=224, patch=16, d=192, depth=12, heads=3, num_classes=1000):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(d, heads, 4 * d) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.ln(self.layers(x))[:, 0])


class BertTiny(nn.Module):
    """BERT-tiny (2 layers, 128 hidden, 2 heads): token ids in (Gather embeddings), post-norm."""

    def __init__(self, vocab=30522, seq=128, d=128, depth=2, heads=2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.ln = nn.LayerNorm(d)
        self.layers = nn.ModuleList([EncoderLayer(d, heads, 4 * d) for _ in range(depth)])
        self.register_buffer("positions", torch.arange(seq).unsqueeze(0), persistent=False)

    def forward(self, ids):
        x = self.ln(self.tok(ids) + self.pos(self.positions[:, :ids.shape[1]]))
        for layer in self.layers:
            x = layer.ln1(x + layer.attend(x))
            x = layer.ln2(x + layer.ff(x))
        return x


class GRUNet(nn.Module):
    def __init__(self, features=40, hidden=128, classes=12):
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


def _img(size):
    return (1, 3, size, size)


# name -> (constructor at full size, input shape at full size, constructor small, shape small)
ARCHS = {
    "resnet50": (ResNet50, _img(224), lambda: ResNet50(10, (1, 1, 1, 1)), _img(64)),
    "mobilenetv2": (lambda: MobileNet(MOBILENETV2), _img(224),
                    lambda: MobileNet(MOBILENETV2[:4], head=128, num_classes=10), _img(64)),
    "mobilenetv3": (lambda: MobileNet(MOBILENETV3_SMALL, 16, 576, HS, nn.Hardsigmoid), _img(224),
                    lambda: MobileNet(MOBILENETV3_SMALL[:4], 16, 96, HS, nn.Hardsigmoid,
                                      num_classes=10), _img(64)),
    "efficientnet_b0": (lambda: MobileNet(EFFICIENTNET_B0, 32, 1280, SI), _img(224),
                        lambda: MobileNet(EFFICIENTNET_B0[:3], 32, 128, SI, num_classes=10),
                        _img(64)),
    "shufflenetv2": (ShuffleNetV2, _img(224),
                     lambda: ShuffleNetV2((24, 48, 96), (1, 2, 1), 10), _img(64)),
    "squeezenet": (SqueezeNet, _img(224), lambda: SqueezeNet(10), _img(64)),
    "densenet": (DenseNet, _img(224), lambda: DenseNet((2, 2), 8, 10), _img(64)),
    "inception": (Inception, _img(224), lambda: Inception(10), _img(64)),
    "vgg": (VGG, _img(224), lambda: VGG((16, "M", 32, "M", 64, "M"), 10), _img(56)),
    "yolo": (YoloLike, _img(320), lambda: YoloLike(1, 3), _img(64)),
    "unet": (UNet, _img(256), lambda: UNet(8), _img(64)),
    "vit_tiny": (ViTTiny, _img(224), lambda: ViTTiny(64, 16, 64, 2, 2, 10), _img(64)),
    "bert_tiny": (BertTiny, (1, 128), lambda: BertTiny(1000, 32, 64, 2, 2), (1, 32)),
    "gru": (GRUNet, (1, 100, 40), lambda: GRUNet(40, 32, 12), (1, 20, 40)),
}


def build_arch(name: str, *, small: bool = False, seed: int = 0):
    """(module in eval mode, example input). BatchNorm statistics come from a few train-mode
    passes on random data, so activations stay in a realistic range."""
    full, full_shape, little, little_shape = ARCHS[name]
    torch.manual_seed(seed)
    model = (little if small else full)()
    shape = little_shape if small else full_shape
    gen = torch.Generator().manual_seed(seed + 1)
    if name == "bert_tiny":
        vocab = model.tok.num_embeddings
        example = torch.randint(0, vocab, shape, generator=gen)
    else:
        example = torch.randn(*shape, generator=gen)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(2, *shape[1:], generator=gen))
    return model.eval(), example


def export_arch(name: str, path, *, small: bool = False) -> tuple:
    """Export the architecture to ONNX (opset 17, inputs "input", outputs "output[N]")."""
    import warnings

    model, example = build_arch(name, small=small)
    n_out = 2 if name == "yolo" else 1
    outputs = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=outputs, opset_version=17)
    return tuple(example.shape)
