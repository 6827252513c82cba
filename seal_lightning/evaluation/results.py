"""Evaluation rows (one per context and condition) -> mean ± standard error per condition, the table,
the retention matrix as text, and the stage's ``results.json``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

NOT_METRICS = ("context_id", "condition", "error", "errors", "texts")


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


def paired(values: list[float], reference: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """The mean per-context difference ``values - reference``, its standard error, and a percentile
    bootstrap 95% interval over contexts (seeded): the comparison of two conditions scored on the
    same contexts, free of the spread between contexts that unpaired error bars carry."""
    if len(values) != len(reference) or not values:
        raise ValueError(f"paired needs two equally long, non-empty lists, got {len(values)} and {len(reference)}")
    diffs = [v - r for v, r in zip(values, reference)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1) / n)
    rng = random.Random(seed)
    boots = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return {"mean": mean, "se": se, "ci95": [boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]], "n": n}


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


def unique_rows(rows: list[dict]) -> list[dict]:
    """One row per (context, condition): a ``DistributedSampler``'s padding repeats a context."""
    unique: dict[tuple[str, str], dict] = {}
    for row in rows:
        unique.setdefault((row["context_id"], row["condition"]), row)
    return list(unique.values())


def write_results(directory: str | Path, record: dict, retention: dict | None = None) -> None:
    """``results.json`` (and ``forgetting.json`` with a retention record) in ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1))
    if retention is not None:
        (out / "forgetting.json").write_text(json.dumps(retention, indent=1))
