"""The package's layout: imports point down the layers, no cycles, no imports hidden in functions,
files small enough to read in one sitting, and the flat layout's module paths still importable."""

import ast
import importlib
import warnings
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "seal_lightning"
# lowest first; a module may import its own layer's siblings and anything below
LAYERS = [("utils", "_compat"), ("lm",), ("generation",), ("inner",), ("tasks",), ("rollout",),
          ("outer", "evaluation"), ("distributed",), ("policy",), ("cli", "__main__")]
OPTIONAL = {"vllm", "seal_lightning.cli.report"}  # optional dependencies, imported where they are needed


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
                cycles.append(stack[stack.index(nxt):] + [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_imports_hidden_in_functions_but_optional_dependencies():
    hidden = [(name, target) for name, path in modules().items() for target, top in imports(name, path)
              if not top and target.split(".")[0] in ("seal_lightning", "vllm") and target not in OPTIONAL
              and not any(target.startswith(o + ".") for o in OPTIONAL)]
    assert hidden == []


def test_files_are_short_and_the_policy_thin():
    lengths = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 300} == {}
    assert lengths["policy.py"] < 200


def test_both_tasks_have_the_same_shape():
    for task in ("knowledge", "arc"):
        names = {p.name for p in (PACKAGE / "tasks" / task).glob("*.py")}
        assert {"__init__.py", "task.py", "sources.py", "datamodule.py"} <= names, task


FLAT_LAYOUT = [  # (old module, a name it defined) from the layout before the subpackages
    ("knowledge_data", "KnowledgeDataModule"), ("knowledge_data", "fictional_passages"), ("knowledge", "KnowledgeTask"),
    ("arc", "ArcTask"), ("arc", "ArcDataModule"), ("arc_data", "load_arc"), ("arc_edit", "parse_recipe"),
    ("arc_grids", "parse_grid"), ("arc_augment", "augmented_tasks"), ("arc_generator", "generate_tasks"),
    ("callback", "SelfEditCallback"), ("writer", "SelfEditWriter"), ("inner", "SequentialLoRA"),
    ("batched", "BatchedLoRA"), ("engines", "make_engine"), ("task", "Task"), ("data", "ContextDataModule"),
    ("models", "load_model"), ("lora_io", "compose"), ("sft", "pack"), ("results", "summarize"),
    ("backends", "VLLMConfig"), ("dist", "gather"), ("ledger", "Ledger"), ("policy", "SEALPolicy"),
    ("policy", "PolicyLoRA"), ("policy", "SamplingConfig"), ("policy", "EvalConfig"), ("cli", "main"),
    ("export", "rebuild_policy"), ("stacked_adamw", "StackedAdamW"), ("cpt", "continued_pretraining"),
    ("forgetting", "forgetting"), ("generation", "generate"),
]


@pytest.mark.parametrize(("old", "name"), FLAT_LAYOUT)
def test_flat_layout_paths_still_import(old, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(f"seal_lightning.{old}")
    assert callable(getattr(module, name))


def test_a_moved_module_warns_with_its_new_path():
    import sys

    sys.modules.pop("seal_lightning.knowledge_data", None)
    with pytest.warns(DeprecationWarning, match="seal_lightning.knowledge_data moved to seal_lightning.tasks.knowledge"):
        importlib.import_module("seal_lightning.knowledge_data")


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_layout"


def test_a_checkpoint_and_config_written_before_the_move_still_work(tmp_path, monkeypatch):
    """``tests/fixtures/pre_layout`` was written by the flat layout (commit c253df0): its config names
    ``seal_lightning.knowledge_data.KnowledgeDataModule``, its checkpoint the same as the
    DataModule's ``_class_path``. ``seal predict`` with both writes the self-edits it wrote then."""
    from lightning.pytorch import LightningDataModule

    from seal_lightning.cli import main, rebuild_policy

    checkpoint = torch.load(FIXTURE / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["_class_path"] == "seal_lightning.knowledge_data.KnowledgeDataModule"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = LightningDataModule.load_from_checkpoint(FIXTURE / "last.ckpt")
    assert type(data).__name__ == "KnowledgeDataModule" and data.path == "builtin:fictional:12"
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "edits.jsonl"
    main(["predict", "--config", str(FIXTURE / "config.yaml"), "--ckpt_path", str(FIXTURE / "last.ckpt"),
          "--trainer.default_root_dir", "run", "--trainer.callbacks+=seal_lightning.SelfEditWriter",
          "--trainer.callbacks.output", str(out)])
    assert out.read_text() == (FIXTURE / "predict.jsonl").read_text()
    policy = rebuild_policy(FIXTURE / "last.ckpt", FIXTURE / "config.yaml")
    assert policy.rollout.task.metric == "f1" and policy.lora.r == 4
