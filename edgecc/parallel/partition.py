"""Model parallelism: cut an ONNX model into consecutive stages for several devices.

The graph's nodes (topologically ordered, as ONNX requires) are split at N-1 positions. A cost
model gives every node a cost (FLOPs for Conv/Gemm/MatMul, output elements for the rest) and a
stage also pays ``link_cost`` FLOP-equivalents per byte it receives from earlier stages (default
50: a device doing ~10 GFLOP/s behind a ~200 MB/s link); the cut positions minimise the most
expensive stage (dynamic programming), and among cuts within 10% of that optimum the one sending
the fewest bytes between stages wins. Each stage becomes its own ONNX
model (``onnx.utils.Extractor``), compiled for its own target; ``pipeline.json`` records the stage
order, the tensors crossing each cut (shapes, bytes) and the balance (max stage / mean stage).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._util import atomic_dir, check_output_dir, read_json
from ..errors import ArtifactError, InputError, ModelError
from ..frontend.onnx_shapes import elements, node_flops, tensor_shapes

PIPELINE_FILE = "pipeline.json"
FORMAT = "edgecc-pipeline"
FORMAT_VERSION = 1
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TOLERANCE = 0.10  # cuts within 10% of the best balance compete on bytes sent
LINK_COST = 50.0  # FLOP-equivalents per byte a stage receives
# never cut right before one of these when it consumes the previous node's output: it would fuse
# into that node's kernel (conv + bias + activation), so a cut there costs a kernel and a transfer
_FUSES_BACKWARD = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                   "BatchNormalization", "Add", "Mul", "Div", "Sub")


@dataclass(frozen=True)
class CrossingTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    source: int  # producing stage, -1 for a model input

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _itemsize(self.dtype)


@dataclass(frozen=True)
class Stage:
    index: int
    artifact: str  # directory name inside the pipeline directory
    target: str
    nodes: tuple[int, int]  # [first, last) node positions in the original graph
    layers: int
    cost: int
    inputs: tuple[CrossingTensor, ...]
    outputs: tuple[CrossingTensor, ...]

    @property
    def bytes_in(self) -> int:
        """Bytes received from earlier stages (not model inputs) per inference."""
        return sum(t.nbytes for t in self.inputs if t.source >= 0)


@dataclass(frozen=True)
class Pipeline:
    model_name: str
    model_sha256: str
    cost_model: str
    stages: tuple[Stage, ...]
    model_inputs: tuple[CrossingTensor, ...]
    model_outputs: tuple[str, ...]

    @property
    def balance(self) -> float:
        costs = [s.cost for s in self.stages]
        return max(costs) / (sum(costs) / len(costs))

    @property
    def bytes_between_stages(self) -> int:
        return sum(s.bytes_in for s in self.stages)

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(format=FORMAT, format_version=FORMAT_VERSION, balance=round(self.balance, 4),
                 bytes_between_stages=self.bytes_between_stages)
        return d

    def write(self, directory: Path) -> None:
        (directory / PIPELINE_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | Path) -> Pipeline:
        d = Path(directory)
        path = d / PIPELINE_FILE
        if not path.is_file():
            raise ArtifactError(f"'{d}' is not a pipeline directory (no {PIPELINE_FILE}; make one "
                                "with 'edgecc partition')")
        data = read_json(path, ArtifactError)
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path}: not an {FORMAT} v{FORMAT_VERSION} file")
        def tensor(t):
            return CrossingTensor(t["name"], tuple(t["shape"]), t["dtype"], t["source"])

        stages = tuple(Stage(s["index"], s["artifact"], s["target"], tuple(s["nodes"]), s["layers"],
                             s["cost"], tuple(map(tensor, s["inputs"])),
                             tuple(map(tensor, s["outputs"]))) for s in data["stages"])
        return cls(data["model_name"], data["model_sha256"], data["cost_model"], stages,
                   tuple(map(tensor, data["model_inputs"])), tuple(data["model_outputs"]))

    def describe(self) -> str:
        lines = [f"pipeline of {self.model_name}: {len(self.stages)} stage(s), cost model "
                 f"{self.cost_model}, balance {self.balance:.2f} (max stage / mean stage), "
                 f"{self.bytes_between_stages / 1024:.1f} KiB between stages per inference"]
        total = sum(s.cost for s in self.stages)
        for s in self.stages:
            ins = ", ".join(f"{t.name} {list(t.shape)}" for t in s.inputs)
            lines.append(f"  stage {s.index} [{s.target}] nodes {s.nodes[0]}-{s.nodes[1] - 1}, "
                         f"{s.layers} layers, {s.cost / 1e6:.2f} MFLOPs "
                         f"({s.cost / total * 100:.0f}%), in: {ins} "
                         f"({s.bytes_in / 1024:.1f} KiB from earlier stages)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- cost model

def _itemsize(dtype: str) -> int:
    """Bytes per element; also for the dtypes numpy lacks (bfloat16, float8_*: bits in the
    name)."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        bits = "".join(c for c in dtype.split("_")[0] if c.isdigit())
        return max(int(bits or 32) // 8, 1)


def node_costs(model, shapes=None) -> list[int]:
    """FLOPs of Conv/ConvTranspose/Gemm/MatMul nodes, output element count for every other node."""
    shapes = shapes or tensor_shapes(model)
    costs = []
    for n in model.graph.node:
        flops = node_flops(n, shapes)
        costs.append(flops if flops is not None else
                     elements(shapes[n.output[0]][0]) if n.output[0] in shapes else 1)
    return costs


def _crossing(model, start: int, end: int) -> tuple[list[str], list[str]]:
    """Tensors a node range [start, end) reads from outside, and produces for later use."""
    nodes = model.graph.node
    init = {t.name for t in model.graph.initializer}
    produced_here = {o for n in nodes[start:end] for o in n.output}
    ins: list[str] = []
    for n in nodes[start:end]:
        for i in n.input:
            if i and i not in produced_here and i not in init and i not in ins:
                ins.append(i)
    later = {i for n in nodes[end:] for i in n.input} | {o.name for o in model.graph.output}
    outs = [o for n in nodes[start:end] for o in n.output if o in later]
    return ins, outs


def _spec(shapes, name: str, source: int) -> CrossingTensor:
    dims, dtype = shapes[name]
    if any(d < 0 for d in dims):
        raise ModelError(f"tensor '{name}' crossing a cut has an unknown shape {dims}")
    return CrossingTensor(name, tuple(dims), dtype, source)


def _cut_bytes(model, shapes) -> list[int]:
    """Bytes crossing a cut before node p, for every p: tensors produced before p and still
    read at or after p (or model outputs)."""
    nodes = model.graph.node
    n = len(nodes)
    last_use: dict[str, int] = {o.name: n for o in model.graph.output}
    for j, nd in enumerate(nodes):
        for i in nd.input:
            last_use[i] = max(last_use.get(i, -1), j)
    out = [0] * (n + 1)
    for i, nd in enumerate(nodes):
        for t in nd.output:
            if t not in last_use or last_use[t] <= i:
                continue
            dims, dtype = shapes.get(t, ((1,), "float32"))
            size = elements(dims) * _itemsize(dtype)
            for p in range(i + 1, min(last_use[t], n - 1) + 1):
                out[p] += size
    return out


def plan(model, stages: int, *, link_cost: float = LINK_COST,
         shapes=None) -> list[tuple[int, int]]:
    """Node ranges of ``stages`` consecutive stages (see the module docstring)."""
    n = len(model.graph.node)
    layers = [i for i, nd in enumerate(model.graph.node) if nd.op_type in LAYER_OPS]
    if stages < 1:
        raise InputError(f"--stages must be at least 1, got {stages}")
    if stages > len(layers):
        raise ModelError(f"cannot cut {stages} stages: the model has only {len(layers)} layer(s) "
                         f"({', '.join(LAYER_OPS)} nodes); use at most {len(layers)} stages")
    shapes = shapes or tensor_shapes(model)
    costs = node_costs(model, shapes)
    prefix = np.concatenate([[0], np.cumsum(costs)])
    layer_prefix = np.zeros(n + 1, dtype=int)
    for i in layers:
        layer_prefix[i + 1:] += 1
    nbytes = _cut_bytes(model, shapes)  # bytes crossing a cut at position p

    def cost(a, b):
        return float(prefix[b] - prefix[a]) + (link_cost * nbytes[a] if a > 0 else 0.0)

    nodes = model.graph.node
    cuttable = [True] * (n + 1)
    for p in range(1, n):
        if nodes[p].op_type in _FUSES_BACKWARD and any(o in nodes[p].input
                                                       for o in nodes[p - 1].output):
            cuttable[p] = False

    def has_layer(a, b):
        return layer_prefix[b] - layer_prefix[a] > 0 and cuttable[a]

    def solve(limit: float | None):
        """DP over (stages used, end position): min max-cost, or min bytes under ``limit``."""
        inf = float("inf")
        best = [[inf] * (n + 1) for _ in range(stages + 1)]
        back = [[-1] * (n + 1) for _ in range(stages + 1)]
        best[0][0] = 0.0
        for k in range(1, stages + 1):
            for b in range(1, n + 1):
                for a in range(k - 1, b):
                    if best[k - 1][a] == inf or not has_layer(a, b):
                        continue
                    c = cost(a, b)
                    if limit is None:
                        v = max(best[k - 1][a], c)
                    else:
                        if c > limit:
                            continue
                        v = best[k - 1][a] + (nbytes[a] if a > 0 else 0)
                    if v < best[k][b]:
                        best[k][b], back[k][b] = v, a
        if best[stages][n] == inf:
            return None, None
        cuts, b = [], n
        for k in range(stages, 0, -1):
            a = back[k][b]
            cuts.append((a, b))
            b = a
        return best[stages][n], cuts[::-1]

    optimum, ranges = solve(None)
    _, cheaper = solve(optimum * (1 + TOLERANCE))
    return cheaper or ranges


# ----------------------------------------------------------------------------- partition

def partition(model_path: str | Path, *, stages: int, output: str | Path,
              targets: Sequence[str] = ("x86_64",), force: bool = False,
              link_cost: float = LINK_COST,
              compile_fn: Callable | None = None,
              log: Callable[[str], None] = lambda _msg: None) -> Pipeline:
    """Cut the ONNX model into ``stages`` stages, compile stage i for ``targets[i]`` (one target
    for all if a single one is given) and write the pipeline directory ``output``."""
    import onnx  # noqa: PLC0415
    from onnx.utils import Extractor  # noqa: PLC0415

    from ..frontend import read_onnx  # noqa: PLC0415
    from ..targets import get_target  # noqa: PLC0415

    if len(targets) not in (1, stages):
        raise InputError(f"--targets lists {len(targets)} target(s) for {stages} stages: give one "
                         "target for all stages or one per stage")
    tgts = [get_target(t) for t in (list(targets) * stages if len(targets) == 1 else targets)]
    output = Path(output)
    check_output_dir(output, force=force)
    model, raw = read_onnx(model_path)
    if link_cost < 0:
        raise InputError(f"--link-cost must be >= 0, got {link_cost}")
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = tensor_shapes(model, inferred=inferred)
    ranges = plan(model, stages, link_cost=link_cost, shapes=shapes)
    costs = node_costs(model, shapes)
    graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    produced_by: dict[str, int] = {}
    stage_list = []
    extractor = Extractor(inferred)
    if compile_fn is None:
        from ..build.compiler import compile_model as compile_fn  # noqa: PLC0415
    with atomic_dir(output, force=force) as tmp:
        for k, (a, b) in enumerate(ranges):
            ins, outs = _crossing(model, a, b)
            inputs = tuple(_spec(shapes, t, -1 if t in graph_inputs else produced_by[t])
                           for t in ins)
            outputs = tuple(_spec(shapes, t, k) for t in outs)
            for t in outs:
                produced_by[t] = k
            sub = extractor.extract_model(list(ins), list(outs))
            sub.graph.name = f"{model.graph.name or 'model'}_stage{k}"
            stage_path = tmp / f"stage{k}.onnx"
            onnx.save(sub, stage_path)
            name = f"stage{k}"
            log(f"[edgecc] stage {k}: nodes {a}-{b - 1} -> {tgts[k].name}")
            compile_fn(stage_path, target=tgts[k], output=tmp / name)
            layers = sum(1 for nd in model.graph.node[a:b] if nd.op_type in LAYER_OPS)
            stage_list.append(Stage(k, name, tgts[k].name, (a, b), layers,
                                    int(sum(costs[a:b])), inputs, outputs))
        pipe = Pipeline(Path(model_path).stem, hashlib.sha256(raw).hexdigest(),
                        f"flops + {link_cost:g} per byte received",
                        tuple(stage_list),
                        tuple(_spec(shapes, i.name, -1) for i in model.graph.input
                              if i.name in graph_inputs),
                        tuple(o.name for o in model.graph.output))
        pipe.write(tmp)
    return pipe
