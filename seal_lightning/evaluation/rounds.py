"""The table across ReST-EM rounds (paper Table 2): one validation file per round, merged after fit.

Round 0 is the untrained policy's validation (``seal fit --validate_before_fit true``); round R the
validation at the end of epoch R-1 (one ReST-EM round per epoch). The files live in
``RUN_DIR/evaluations/val_round<R>.json``; the merged table in ``RUN_DIR/rounds.json``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .results import summarize

ROUNDS_DIR = "evaluations"
ROUND0 = "val_round0.json"


def has_round0(root: str | Path) -> bool:
    return Path(root, ROUNDS_DIR, ROUND0).exists()


def save_round0(root: str | Path, results: str | Path) -> None:
    """Keep the untrained policy's ``results.json`` as round 0."""
    out = Path(root, ROUNDS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, out / ROUND0)


def save_round(root: str | Path, epoch: int, record: dict) -> None:
    """The validation at the end of ``epoch``: round ``epoch + 1``."""
    out = Path(root, ROUNDS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"val_round{epoch + 1}.json").write_text(json.dumps(record, indent=1))


def read_rounds(root: str | Path) -> dict[int, dict]:
    """``{R: validation record}`` of ``root/evaluations/val_round<R>.json``, rounds in order."""
    files = {
        int(m[1]): p
        for p in Path(root, ROUNDS_DIR).glob("val_round*.json")
        if (m := re.fullmatch(r"val_round(\d+)\.json", p.name))
    }
    return {r: json.loads(files[r].read_text()) for r in sorted(files)}


def merge(root: str | Path) -> dict | None:
    """The validations of ``root/evaluations/val_round<R>.json`` merged into one summary: round 0's
    conditions (the untrained policy: base model, passage, self-edits before RL, ...) under their own
    labels, each later round's as ``"<label> (round R)"``, with every row's paired difference to the
    reference condition of the earliest round that has it (same validation contexts in every round).
    None when there is no round file."""
    records = read_rounds(root)
    if not records:
        return None
    rows, steps, names = [], {}, []
    for r, record in records.items():
        steps[r] = record["global_step"]
        labels = record["labels"]
        rows += [{**row, "condition": _label(labels, row["condition"], r)} for row in record["per_context"]]
        names.append((_label(labels, record.get("reference", "base_self_edit"), r), _label(labels, "passage", r)))
    present = {row["condition"] for row in rows}
    reference, passage = next(((ref, p) for ref, p in names if ref in present), (None, names[0][1]))
    return {"summary": summarize(rows, reference, passage), "reference": reference, "global_steps": steps}


def _label(labels: dict[str, str], condition: str, round_: int) -> str:
    """A condition's name in the merged table: its label, and after round 0 the round."""
    return labels.get(condition, condition) + ("" if round_ == 0 else f" (round {round_})")


def write_rounds(root: str | Path, merged: dict) -> Path:
    path = Path(root, "rounds.json")
    path.write_text(json.dumps(merged, indent=1))
    return path
