"""The package's layout: imports point down the layers, no cycles, no imports hidden in functions,
and files small enough to read in one sitting."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seal_lightning"
# lowest first; a module may import its own layer's siblings and anything below
LAYERS = [
    ("utils",),
    ("lm",),
    ("generation",),
    ("inner",),
    ("tasks",),
    ("rollout",),
    ("outer", "evaluation"),
    ("adapt",),
    ("distributed",),
    ("policy",),
    ("cli", "__main__"),
]
OPTIONAL = {
    "vllm",
    "seal_lightning.cli.report",
    "seal_lightning.cli.report_plots",
}  # optional dependencies, imported where they are needed


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at top level)`` for every import of ``seal_lightning`` or an optional package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found += [(t, node.col_offset == 0) for t in targets]
    return found


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package root re-exports the public API
    return next(i for i, group in enumerate(LAYERS) if parts[1] in group)


def edges() -> dict[str, set[str]]:
    """What importing each module executes first: its imports and their parent packages (not the root)."""
    mods, graph = modules(), {}
    for name, path in mods.items():
        graph[name] = set()
        for target, _ in imports(name, path):
            while target.count(".") >= 1:
                if target in mods and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
                target = target.rpartition(".")[0]
    return graph


def test_imports_point_down_the_layers():
    wrong = [(a, b) for a, targets in edges().items() for b in targets if layer(b) > layer(a)]
    assert wrong == []


def test_no_import_cycles():
    graph, state, cycles = edges(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_imports_hidden_in_functions_but_optional_dependencies():
    hidden = [
        (name, target)
        for name, path in modules().items()
        for target, top in imports(name, path)
        if not top
        and target.split(".")[0] in ("seal_lightning", "vllm")
        and target not in OPTIONAL
        and not any(target.startswith(o + ".") for o in OPTIONAL)
    ]
    assert hidden == []


def test_files_are_short_and_the_policy_thin():
    lengths = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in lengths.items() if n > 300} == {}
    assert lengths["policy.py"] < 200


def test_both_tasks_have_the_same_shape():
    for task in ("knowledge", "arc"):
        names = {p.name for p in (PACKAGE / "tasks" / task).glob("*.py")}
        assert {"__init__.py", "task.py", "sources.py", "datamodule.py"} <= names, task
