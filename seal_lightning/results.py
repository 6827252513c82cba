"""Evaluation rows (one per context and condition) -> mean ± standard error per condition, the table,
and the table across ReST-EM rounds (paper Table 2)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

NOT_METRICS = ("context_id", "condition", "error", "errors")
ROUNDS_DIR = "evaluations"  # under trainer.default_root_dir: val_round<R>.json, one per round


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """``{condition: {"n": contexts, metric: mean, metric_se: standard error}}``, conditions in row order."""
    summary: dict[str, dict[str, float]] = {}
    for condition in dict.fromkeys(r["condition"] for r in rows):
        picked = [r for r in rows if r["condition"] == condition]
        summary[condition] = {"n": len(picked)}
        for metric in (k for k in picked[0] if k not in NOT_METRICS):
            values = [r[metric] for r in picked]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
            summary[condition][metric] = mean
            summary[condition][f"{metric}_se"] = math.sqrt(var / len(values))
    return summary


def format_table(summary: dict[str, dict[str, float]], title: str) -> str:
    """A plain-text table of each metric (mean ± standard error over contexts) per condition."""
    metrics = [m for m in next(iter(summary.values())) if m != "n" and not m.endswith("_se")]
    width = max(16, *(len(c) + 2 for c in summary))
    header = f"{'condition':<{width}}" + "".join(f"{m:>16}" for m in metrics) + f"{'contexts':>10}"
    lines = [title, header, "-" * len(header)]
    for condition, values in summary.items():
        cells = "".join(f"{values[m]:>9.3f} ±{values[m + '_se']:.3f}" for m in metrics)
        lines.append(f"{condition:<{width}}{cells}{values['n']:>10}")
    return "\n".join(lines)


def rounds(root: str | Path) -> dict | None:
    """The validations of ``root/evaluations/val_round<R>.json`` merged into one summary: round 0's
    conditions (the untrained policy: base model, passage, self-edits before RL, ...) under their own
    labels, each later round's as ``"<label> (round R)"``. None when there is no round file."""
    files = {}
    for path in Path(root, ROUNDS_DIR).glob("val_round*.json"):
        match = re.fullmatch(r"val_round(\d+)\.json", path.name)
        if match:
            files[int(match[1])] = path
    if not files:
        return None
    merged: dict[str, dict[str, float]] = {}
    steps = {}
    for r in sorted(files):
        record = json.loads(files[r].read_text())
        steps[r] = record["global_step"]
        for condition, values in record["summary"].items():
            label = record["labels"].get(condition, condition)
            merged[label if r == 0 else f"{label} (round {r})"] = values
    return {"summary": merged, "global_steps": steps}


def format_matrix(record: dict) -> str:
    """The retention matrix of the task's metric as text: a row per update, a column per context."""
    metric, n = record["metric"], len(record["contexts"])
    header = f"{metric + ' on context':<18}" + "".join(f"{j + 1:>7}" for j in range(n))
    lines = ["forgetting: score on each context after each sequential update", header, "-" * len(header)]
    lines.append(f"{'before any update':<18}" + "".join(f"{v:>7.3f}" for v in record["before"][metric]))
    for i, row in enumerate(record["after"][metric]):
        failed = "  (failed: unchanged)" if record["errors"][i] else ""
        lines.append(f"{f'after update {i + 1}':<18}" + "".join(f"{v:>7.3f}" for v in row) + failed)
    return "\n".join(lines)
