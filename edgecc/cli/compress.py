"""``edgecc prune`` and ``edgecc distill``."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import parse_input_shape, _check_output_file, _onnx_model_arg


def register_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a model's weights (L1, unstructured or by channel)",
                       description="l1-unstructured: global L1 magnitude pruning of every "
                       "Conv/Gemm/MatMul weight (torch.nn.utils.prune); zeros, same shapes. "
                       "l1-structured: remove the conv output channels with the smallest L1 norm "
                       "(and the matching BN entries and next-layer inputs): fewer FLOPs, faster "
                       "kernels. Fine-tune or distill afterwards ('edgecc distill').")
    p.add_argument("model", type=Path, help="the ONNX model, or a whole torch.nn.Module saved "
                   "with torch.save (.pt, exported to ONNX first: needs --input-shape)")
    p.add_argument("--input-shape", action="append", type=parse_input_shape, default=[],
                   metavar="NAME=D0,D1,...", help="input name and shape for a .pt model")
    p.add_argument("--sparsity", type=float, required=True,
                   help="fraction of weights (unstructured) or channels (structured), in (0, 1)")
    p.add_argument("--method", choices=("l1-unstructured", "l1-structured"),
                   default="l1-unstructured", help="default: l1-unstructured")
    p.add_argument("-o", "--output", type=Path, required=True, help="pruned ONNX model to write")
    p.add_argument("-f", "--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(drive=drive_prune)


def drive_prune(args) -> int:
    from ..compress.prune import check_sparsity, prune  # noqa: PLC0415

    from .._util import atomic_write_bytes  # noqa: PLC0415

    check_sparsity(args.sparsity)
    _check_output_file(args.output, force=args.force)
    pruned, report = prune(_onnx_model_arg(args.model, "prune", args.input_shape),
                           sparsity=args.sparsity, method=args.method)
    atomic_write_bytes(args.output, pruned.SerializeToString())
    print(report.describe())
    print(f"wrote {args.output}")
    return 0


def register_distill(sub) -> None:
    p = sub.add_parser("distill", help="fine-tune a student model against a teacher (KD)",
                       description="Knowledge distillation (Hinton): train the student ONNX model "
                       "on DATA with loss alpha*T^2*KL(teacher/T || student/T) + (1-alpha)*CE. "
                       "--alpha 0 is plain fine-tuning on the labels (no teacher needed). "
                       "--nproc N trains with N processes (torch DDP, gloo).")
    p.add_argument("--teacher", type=Path, help="teacher ONNX model")
    p.add_argument("--student", type=Path, required=True, help="student ONNX model (e.g. pruned)")
    p.add_argument("--data", required=True,
                   help="'digits' (bundled with scikit-learn) or an .npz with arrays x and y")
    p.add_argument("--test-data", help="data to report accuracy on (default: the digits test "
                   "split when --data digits)")
    p.add_argument("-o", "--output", type=Path, required=True, help="trained student to write")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature (default 4)")
    p.add_argument("--alpha", type=float, default=0.7,
                   help="weight of the soft (teacher) loss, in [0, 1] (default 0.7)")
    p.add_argument("--epochs", type=int, default=30, help="default 30")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--nproc", type=int, default=1, help="training processes (DDP, default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-f", "--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(drive=drive_distill)


def drive_distill(args) -> int:
    from ..compress import datasets  # noqa: PLC0415
    from ..compress.distill import DistillConfig, distill  # noqa: PLC0415

    config = DistillConfig(temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                           lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                           nproc=args.nproc)
    _check_output_file(args.output, force=args.force)
    for path in (args.teacher, args.student):
        if path is not None:
            _onnx_model_arg(path, "distill")
    train = datasets.load(args.data, split="train")
    test_spec = args.test_data or (args.data if args.data in datasets.BUILTIN else None)
    test = datasets.load(test_spec, split="test") if test_spec else None
    print(f"[edgecc] training {args.student} on {len(train)} samples, {args.epochs} epochs, "
          f"{args.nproc} process(es), alpha {args.alpha}, T {args.temperature}", file=sys.stderr)
    r = distill(args.teacher if args.alpha > 0 else None, args.student, data=train,
                output=args.output, test=test, config=config, on_progress=print)
    print(f"wrote {r.output} in {r.seconds:.1f} s ({r.nproc} process(es))")
    if r.student_accuracy is not None:
        line = f"  test accuracy: student {r.student_accuracy * 100:.2f}%"
        if r.teacher_accuracy is not None:
            line += (f", teacher {r.teacher_accuracy * 100:.2f}% "
                     f"({(r.student_accuracy - r.teacher_accuracy) * 100:+.2f} points)")
        print(line)
    return 0
