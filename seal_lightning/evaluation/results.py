"""Evaluation rows (one per context and condition) -> mean ± standard error per condition, paired
differences to a reference condition, the table, the retention matrix as text, and ``results.json``.

Every condition is scored on the same contexts, so two conditions compare *paired*: the mean of the
per-context differences, with its standard error and a bootstrap 95% interval. Each condition's
summary entry carries ``<metric>_delta``, ``<metric>_delta_se`` and ``<metric>_delta_ci95`` against
the reference condition (named by the entry's ``reference`` key; ``base_self_edit`` by default) and
``<metric>_vs_passage*`` against ``passage``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

NOT_METRICS = ("context_id", "condition", "error", "errors", "texts")
PAIRED = {"delta": None, "vs_passage": "passage"}  # suffix -> condition (None: the reference)


def metric_names(entry: dict) -> list[str]:
    """The metrics of a summary entry (not ``n``, ``reference``, standard errors or paired differences)."""
    derived = ("_se", "_ci95", *(f"_{suffix}" for suffix in PAIRED))
    return [k for k in entry if k not in ("n", "reference") and not k.endswith(derived)]


def summarize(rows: list[dict], reference: str | None = "base_self_edit", passage: str = "passage") -> dict[str, dict]:
    """``{condition: {"n": contexts, metric: mean, metric_se: standard error, ...}}``, conditions in row
    order, with each condition's paired differences to ``reference`` and to ``passage`` (conditions
    present in ``rows``) over the contexts they share."""
    summary: dict[str, dict] = {}
    for condition in dict.fromkeys(r["condition"] for r in rows):
        picked = [r for r in rows if r["condition"] == condition]
        summary[condition] = {"n": len(picked)}
        for metric in (k for k in picked[0] if k not in NOT_METRICS):
            values = [r[metric] for r in picked]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
            summary[condition][metric] = mean
            summary[condition][f"{metric}_se"] = math.sqrt(var / len(values))
    by_context = {c: {r["context_id"]: r for r in rows if r["condition"] == c} for c in summary}
    for suffix, other in PAIRED.items():
        other = other or reference
        if other not in by_context or (suffix != "delta" and other == reference):
            continue  # with passage as the reference, ``_delta`` already is the difference to it
        for condition, entry in summary.items():
            shared = [cid for cid in by_context[condition] if cid in by_context[other]]
            if condition == other or not shared:
                continue
            for metric in (m for m in metric_names(entry) if m in by_context[other][shared[0]]):
                diff = paired(
                    [by_context[condition][c][metric] for c in shared], [by_context[other][c][metric] for c in shared]
                )
                entry[f"{metric}_{suffix}"], entry[f"{metric}_{suffix}_se"] = diff["mean"], diff["se"]
                entry[f"{metric}_{suffix}_ci95"] = diff["ci95"]
            if suffix == "delta":
                entry["reference"] = other
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


def format_table(summary: dict[str, dict], title: str, labels: dict[str, str] | None = None) -> str:
    """A plain-text table of each metric (mean ± standard error over contexts) per condition, then
    each metric's paired difference to the reference condition (Δ ± its standard error); conditions
    shown by their ``labels`` (a task's names, e.g. ARC's ``icl``) where given."""
    labels = labels or {}
    summary = {labels.get(c, c): v for c, v in summary.items()}
    metrics = list(dict.fromkeys(m for v in summary.values() for m in metric_names(v)))  # e.g. CPT has no logprob
    reference = next((labels.get(v["reference"], v["reference"]) for v in summary.values() if "reference" in v), None)
    deltas = metrics if reference else []
    width = max(16, *(len(c) + 2 for c in summary))
    header = (
        f"{'condition':<{width}}"
        + "".join(f"{m:>16}" for m in metrics)
        + "".join(f"{'Δ' + m:>17}" for m in deltas)
        + f"{'contexts':>10}"
    )
    lines = [title, header, "-" * len(header)]
    for condition, values in summary.items():
        cells = "".join(f"{values[m]:>9.3f} ±{values[m + '_se']:.3f}" if m in values else " " * 16 for m in metrics)
        cells += "".join(
            f"{values[m + '_delta']:>+10.3f} ±{values[m + '_delta_se']:.3f}" if m + "_delta" in values else " " * 17
            for m in deltas
        )
        lines.append(f"{condition:<{width}}{cells}{values['n']:>10}")
    if reference:
        lines.append(f"Δ: paired difference to {reference} over the same contexts (± its standard error)")
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
