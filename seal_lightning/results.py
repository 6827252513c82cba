"""Evaluation rows (one per context and condition) -> mean ± standard error per condition, and the table."""

from __future__ import annotations

import math

NOT_METRICS = ("context_id", "condition", "error", "errors")


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
