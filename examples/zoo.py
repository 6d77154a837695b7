"""Small real model architectures with fixed seeds (random weights), used by the examples,
tests and benchmarks. Shapes are small so that everything runs in seconds on 2 cores."""

from __future__ import annotations

import math

import torch
from torch import nn


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV2Small(nn.Module):
    """MobileNetV2-style: stem, inverted residual blocks with depthwise convs, pool, classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        cfg = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (64, 2, 6), (96, 1, 6)]
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU6()]
        cin = 16
        for cout, stride, expand in cfg:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers += [nn.Conv2d(cin, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Small(nn.Module):
    """ResNet-18-style: 7x7 stem + maxpool, 4 stages x 2 basic blocks, pool, classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, cout in enumerate((width, width * 2, width * 4, width * 8)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    def __init__(self, din: int = 256, hidden: int = 512, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: multi-head self-attention + GELU feed-forward."""

    def __init__(self, dim: int = 64, heads: int = 4, ff: int = 128):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, self.dh).permute(
            2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.dh), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.ff(self.ln2(x))


class DigitsCNN(nn.Module):
    """The reference CNN for the compression work: sklearn's 8x8 handwritten digits, 10 classes.
    Conv+BN+ReLU blocks so that batch-norm folding, quantization and channel pruning all apply."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class CommonLayers(nn.Module):
    """Not a model to deploy: a tuning corpus. One of each layer kind edge CNNs are built from
    (MobileNet inverted residuals with depthwise convs, ResNet basic blocks, stems, 1x1
    projections, pooling, a classifier), at widths and sizes the example models do not use.
    Its shipped tuning log gives transfer tuning donors for models that were never tuned."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
            InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 40, 2, 4),
            InvertedResidual(40, 40, 1, 4),
            nn.Conv2d(40, 48, 7, 2, 3, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            BasicBlock(48, 48, 1), BasicBlock(48, 80, 2),
            nn.Conv2d(80, 192, 1, bias=False), nn.BatchNorm2d(192), nn.ReLU6())
        self.fc = nn.Linear(192, num_classes)

    def forward(self, x):
        x = self.body(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class CommonEncoder(nn.Module):
    """Not a model to deploy: the tuning corpus for transformer layers (attention matmuls, the
    QKV/projection/feed-forward linears with their fused epilogues), at a width, head size and
    sequence length the example transformer does not use."""

    def __init__(self):
        super().__init__()
        self.block = EncoderBlock(dim=96, heads=4, ff=256)

    def forward(self, x):
        return self.block(x)


# name -> (constructor, example input shape)
MODELS = {
    "mobilenetv2": (MobileNetV2Small, (1, 3, 96, 96)),
    "resnet18": (ResNet18Small, (1, 3, 96, 96)),
    "mlp": (MLP, (1, 256)),
    "transformer": (EncoderBlock, (1, 32, 64)),
}
# tuning corpora, not benchmarked: shipped logs of these are transfer-tuning donors
CORPUS = {"layers": (CommonLayers, (1, 3, 128, 128)),
          "encoder": (CommonEncoder, (1, 48, 96))}
# trained, not random: made by examples/make_digits.py
TRAINED = {"digits": (DigitsCNN, (1, 1, 8, 8))}


def build(name: str, *, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, seeded weights and BN statistics) and a seeded example input."""
    ctor, shape = {**MODELS, **CORPUS}[name]
    torch.manual_seed(seed)
    model = ctor().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding/decomposition is exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))


def export_onnx(model: nn.Module, example: torch.Tensor, path, *, keep_batchnorm: bool = False,
                ) -> None:
    """ONNX (opset 17, input "input", output "output"). ``keep_batchnorm`` exports in training
    mode so BatchNormalization nodes stay in the graph (the exporter folds them otherwise)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=17, training=mode,
                          do_constant_folding=not keep_batchnorm)
