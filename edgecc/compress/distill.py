"""Knowledge distillation (Hinton et al.): fine-tune a student ONNX model against a teacher's soft
targets, on one process or several with torch.distributed (DDP, gloo on CPU).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The teacher is any ONNX model: its logits on the training data are computed once with ONNX Runtime.
The student is trained in PyTorch through :mod:`edgecc.frontend.onnx_torch` and written back as ONNX with
the same graph and new weights. ``alpha=0`` is plain fine-tuning on the labels (the baseline a
distilled student is compared with). With ``nproc=N`` the data is sharded over N processes that
average their gradients every step, so all end with identical weights.
"""

from __future__ import annotations

import gc
import hashlib
import json
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._util import atomic_write_bytes
from .datasets import Labelled
from ..errors import InputError, ModelError


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    nproc: int = 1

    def __post_init__(self):
        if self.temperature <= 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InputError("epochs and batch size must be at least 1 and lr positive")
        if self.nproc < 1:
            raise InputError(f"nproc must be at least 1, got {self.nproc}")
        if self.batch_size < self.nproc:
            raise InputError(f"batch size {self.batch_size} is smaller than nproc {self.nproc}")


@dataclass(frozen=True)
class DistillResult:
    output: Path
    student_accuracy: float | None  # on the test data, if given
    teacher_accuracy: float | None
    seconds: float
    nproc: int
    rank_digests: tuple[str, ...]  # sha256 of each process's final weights (all equal)


def _output_shapes(model) -> list[tuple]:
    return [tuple(d.dim_value if d.HasField("dim_value") else None
                  for d in o.type.tensor_type.shape.dim) for o in model.graph.output]


def check_pair(teacher, student) -> None:
    """Teacher and student must produce the same output shape (the same classes)."""
    t, s = _output_shapes(teacher), _output_shapes(student)
    if len(t) != 1 or len(s) != 1:
        raise ModelError(f"distillation needs single-output classifiers (teacher has {len(t)} "
                         f"outputs, student {len(s)})")
    if t[0][1:] != s[0][1:]:
        raise ModelError(f"the student's output shape {s[0]} differs from the teacher's {t[0]}: "
                         "they must predict the same classes")


def kd_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float):
    """Hinton's distillation loss (see module docstring); torch tensors in, scalar out."""
    import torch.nn.functional as F  # noqa: N812, PLC0415

    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0.0 or teacher_logits is None:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    return alpha * soft + (1.0 - alpha) * hard


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, world: int, port: int, student: bytes, x: np.ndarray, y: np.ndarray,
           teacher_logits: np.ndarray | None, cfg: DistillConfig, out_dir: str,
           on_progress) -> None:
    """One training process (rank) of ``world``; rank 0 writes the student."""
    import onnx  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    from ..frontend.onnx_torch import make_module  # noqa: PLC0415

    if world > 1:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    torch.manual_seed(cfg.seed)
    module = make_module(onnx.load_model_from_string(student))
    net = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        net = DistributedDataParallel(module)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    tt = None if teacher_logits is None else torch.from_numpy(teacher_logits)
    per_rank = cfg.batch_size // world
    steps = (len(x) // world) // per_rank  # equal on every rank: DDP steps in lockstep
    for epoch in range(cfg.epochs):
        net.train()
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(x))
        shard = torch.from_numpy(order[rank::world][: steps * per_rank].copy())
        total = 0.0
        for idx in shard.split(per_rank):
            opt.zero_grad()
            loss = kd_loss(net(xt[idx]), None if tt is None else tt[idx], yt[idx],
                           temperature=cfg.temperature, alpha=cfg.alpha)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        if on_progress is not None and rank == 0 and (epoch + 1) % max(1, cfg.epochs // 6) == 0:
            on_progress(f"[edgecc] epoch {epoch + 1}/{cfg.epochs}  "
                        f"loss {total / max(steps, 1):.4f}")
    if world > 1:  # BN running statistics are per process: average them (parameters already agree)
        for buf in module.buffers():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world
    module.eval()
    h = hashlib.sha256()
    for _, t in sorted([*module.named_parameters(), *module.named_buffers()]):
        h.update(t.detach().numpy().tobytes())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"digest": h.hexdigest()}))
    if rank == 0:
        Path(out_dir, "student.onnx").write_bytes(module.to_onnx().SerializeToString())
    if world > 1:
        # DDP's reducer holds the gloo group and sits in reference cycles: left to the
        # interpreter's teardown, the group's threads can be destroyed while joinable and abort
        # the process (seen once in CI: SIGABRT, "terminate called without an active exception")
        del net, opt, sched
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def distill(teacher, student, *, data: Labelled, output: str | Path, test: Labelled | None = None,
            config: DistillConfig = DistillConfig(),
            on_progress: Callable[[str], None] | None = None) -> DistillResult:
    """Train ``student`` (ONNX path) against ``teacher`` (ONNX path, or None with ``alpha=0``) on
    ``data``; write the student to ``output`` (.onnx). Accuracies on ``test`` if given.
    ``on_progress`` receives a line a few times during training (from the first process, when
    ``config.nproc > 1``: it must then be picklable, like ``print``)."""
    import onnx  # noqa: PLC0415

    from .evaluate import predict_onnx, top1  # noqa: PLC0415
    from ..frontend import read_onnx  # noqa: PLC0415
    from ..frontend.onnx_torch import check_supported  # noqa: PLC0415

    start = time.perf_counter()
    s_model, s_raw = read_onnx(student)
    check_supported(s_model)
    in_shape = tuple(d.dim_value for d in s_model.graph.input[0].type.tensor_type.shape.dim)
    if tuple(data.x.shape[1:]) != in_shape[1:]:
        raise InputError(f"data samples have shape {tuple(data.x.shape[1:])}; the student's input "
                         f"is {in_shape}")
    if len(data) < config.batch_size:
        raise InputError(f"{len(data)} training samples are fewer than one batch "
                         f"({config.batch_size})")
    t_logits = t_raw = None
    if config.alpha > 0.0:
        if teacher is None:
            raise InputError("distillation with alpha > 0 needs a teacher (alpha 0 is plain "
                             "fine-tuning)")
        t_model, t_raw = read_onnx(teacher)
        check_pair(t_model, s_model)
        t_logits = predict_onnx(t_raw, data.x).astype(np.float32)
    out = Path(output)
    with tempfile.TemporaryDirectory(prefix="edgecc-distill-") as tmp:
        args = (config.nproc, _free_port(), s_raw, data.x, data.y, t_logits, config, tmp,
                on_progress)
        if config.nproc == 1:
            _train(0, *args)
        else:
            import torch.multiprocessing as mp  # noqa: PLC0415

            mp.spawn(_train, args=args, nprocs=config.nproc, join=True)
        digests = tuple(json.loads(Path(tmp, f"rank{r}.json").read_text())["digest"]
                        for r in range(config.nproc))
        trained = Path(tmp, "student.onnx").read_bytes()
        onnx.checker.check_model(onnx.load_model_from_string(trained))
        atomic_write_bytes(out, trained)
    s_acc = t_acc = None
    if test is not None:
        s_acc = top1(predict_onnx(trained, test.x), test.y)
        if t_raw is not None:
            t_acc = top1(predict_onnx(t_raw, test.x), test.y)
    return DistillResult(out, s_acc, t_acc, time.perf_counter() - start, config.nproc, digests)
