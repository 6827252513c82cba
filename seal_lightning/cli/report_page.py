"""``RUN_DIR/report/index.html``: one self-contained page to read a run's self-edits.

The page (``assets/report.html``) embeds everything it shows — the ledger, the held-out contexts'
self-edits before and after RL with their paired deltas, the charts as PNG data, the run's config,
commands and commits — so it opens from disk with no network. Its table of training self-edits
sorts by any column and filters by round, kept, reward range and text; the filters and the sort
live in the URL's fragment (``#sort=reward&dir=desc&round=1``), so a view can be shared or
bookmarked.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ..evaluation.results import metric_names, paired
from .run_info import read_invocations

TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "report.html"
REFERENCE, TRAINED = "base_self_edit", "self_edit"


def ledger_rows(ledger: list[dict]) -> list[dict]:
    """The ledger's fields the page shows, one row per self-edit."""
    return [
        {
            "round": r.get("epoch"),
            "context": str(r.get("context_id")),
            "sample": r.get("sample"),
            "reward": r.get("reward"),
            "baseline": r.get("baseline"),
            "post": r.get("post"),
            "loss": r.get("inner_loss"),
            "kept": bool(r.get("kept")),
            "text": str(r.get("text", "")),
            **({"error": r["error"]} if r.get("error") else {}),
        }
        for r in ledger
    ]


def heldout(results: dict | None) -> dict | None:
    """Each held-out context's self-edits and scores before RL (``base_self_edit``) and after
    (``self_edit``), with the paired deltas over contexts; None when the results lack either."""
    if not results:
        return None
    rows = results.get("per_context", [])
    by_condition = {c: {r["context_id"]: r for r in rows if r["condition"] == c} for c in (REFERENCE, TRAINED)}
    shared = [cid for cid in by_condition[TRAINED] if cid in by_condition[REFERENCE]]
    if not shared:
        return None
    metrics = [m for m in metric_names(results["summary"][TRAINED]) if m in results["summary"][REFERENCE]]
    labels = results.get("labels", {})
    page_rows = []
    for cid in shared:
        before, after = by_condition[REFERENCE][cid], by_condition[TRAINED][cid]
        page_rows.append(
            {
                "context_id": cid,
                "reference_texts": before.get("texts", []),
                "texts": after.get("texts", []),
                "reference_scores": {m: before[m] for m in metrics},
                "scores": {m: after[m] for m in metrics},
            }
        )
    return {
        "title": f"{results['stage']} (step {results['global_step']})",
        "metrics": metrics,
        "rows": page_rows,
        "label": labels.get(TRAINED, TRAINED),
        "reference_label": labels.get(REFERENCE, REFERENCE),
        "paired": {
            m: paired([r["scores"][m] for r in page_rows], [r["reference_scores"][m] for r in page_rows])
            for m in metrics
        },
    }


def newest(run: Path, name: str) -> Path | None:
    """The newest ``logs/version_*/<name>`` of the run (a resumed run logs to a new version)."""
    paths = sorted(run.glob(f"logs/version_*/{name}"), key=lambda p: p.stat().st_mtime)
    return paths[-1] if paths else None


def write_page(run: Path, out: Path, ledger: list[dict], results: dict | None, charts: list[Path]) -> Path:
    """Write ``out/index.html`` for ``run`` and return its path."""
    config = newest(run, "config.yaml")
    data = {
        "run": str(run),
        "config": config.read_text() if config else None,
        "invocations": read_invocations(run),
        "ledger": ledger_rows(ledger),
        "heldout": heldout(results),
        "charts": [[p.name, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()] for p in charts],
    }
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")  # no text can close the script
    path = out / "index.html"
    path.write_text(TEMPLATE.read_text().replace("/*DATA*/", payload), encoding="utf-8")
    return path
