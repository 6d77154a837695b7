"""The package's layout: imports go one way (no cycles between modules or between the stage
subpackages) and the runtime does not reach into the compile side."""

import ast
from pathlib import Path

import edgecc

PACKAGE = Path(edgecc.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the edgecc modules it imports, at module level or inside functions."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, found = {}, [], []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def _stage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_modules():
    graph = _imports()
    assert len(graph) > 50  # the walk found the package
    assert _cycles(graph) == []


def test_no_import_cycles_between_stage_subpackages():
    stages: dict[str, set[str]] = {}
    for module, deps in _imports().items():
        for d in deps:
            a, b = _stage(module), _stage(d)
            if a != b and "edgecc" not in (a, b):  # the package root re-exports the API
                stages.setdefault(a, set()).add(b)
    assert {"edgecc.frontend", "edgecc.build", "edgecc.runtime"} <= set(stages)
    assert _cycles(stages) == []


def test_runtime_does_not_import_the_compile_side():
    graph = _imports()
    reached, todo = set(), ["edgecc.runtime", "edgecc.runtime.model"]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(graph.get(m, ()))
    reached.discard("edgecc.runtime.verify")  # host-side check, imported only by its callers
    compile_side = {"edgecc.build", "edgecc.passes", "edgecc.schedules", "edgecc.frontend",
                    "edgecc.tuning", "edgecc.compress"}
    assert "edgecc.runtime.loadguard" in reached
    assert not {m for m in reached if _stage(m) in compile_side}


def test_the_compile_spine_does_not_import_compression():
    # compression sits beside the spine and calls it (it hands compile and tune a Quantization,
    # which they call through build.compiler.Quantizer); never the other way
    spine = {"edgecc.frontend", "edgecc.passes", "edgecc.schedules", "edgecc.build",
             "edgecc.tuning", "edgecc.artifact", "edgecc.runtime", "edgecc.targets"}
    reached = {(m, d) for m, deps in _imports().items() for d in deps
               if _stage(m) in spine and _stage(d) == "edgecc.compress"}
    assert reached == set()
