"""``seal report RUN_DIR``: PNG plots and a ``report.md`` from a run's ledger and logged metrics.

Reads what the run has of: ``RUN_DIR/self_edits.jsonl`` (the ledger of a ``seal fit``), every
``RUN_DIR/logs/version_*/metrics.csv`` (a resumed run logs to a new version), the newest
``results.json`` and ``forgetting.json``, and ``RUN_DIR/rounds.json``; writes to ``RUN_DIR/report/``
(or ``--output``):

* ``rewards.png``: the reward distribution of each round (epoch);
* ``training.png``: mean and max reward and the kept fraction per training step;
* ``conditions.png``: each condition's score with standard-error bars (the result table);
* ``deltas.png``: each condition's paired difference to the reference condition, with 95% intervals;
* ``rounds.png``, ``rounds_deltas.png``: the same for the table across ReST-EM rounds (paper Table 2);
* ``length_vs_reward.png``: self-edit length against reward;
* ``forgetting.png``: the retention matrix of a forgetting run as a heatmap;
* ``report.md``: the tables, the training summary, the plots, and the best and worst self-edits;
* ``index.html``: one self-contained page to browse every self-edit (``report_page``).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from ..evaluation import format_matrix, format_table
from ..outer.ledger import read_ledger as read_ledger_file
from .report_page import newest, write_page
from .report_plots import (
    plot_conditions,
    plot_deltas,
    plot_forgetting,
    plot_length_vs_reward,
    plot_rewards,
    plot_training,
)

SHOWN = 3  # best and worst self-edits quoted in report.md
QUOTE_CHARS = 700


def read_ledger(run: Path) -> list[dict]:
    path = run / "self_edits.jsonl"
    return read_ledger_file(path) if path.is_file() else []


def read_train_metrics(run: Path) -> list[dict[str, float]]:
    """Rows of every metrics.csv that carry training metrics, by step (a resumed run's versions merged)."""
    rows: dict[int, dict[str, float]] = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])):
        for row in csv.DictReader(path.open()):
            if row.get("train/reward_mean"):
                rows[int(row["step"])] = {k: float(v) for k, v in row.items() if v}
    return [rows[step] for step in sorted(rows)]


def read_newest(run: Path, name: str) -> dict | None:
    """The newest ``logs/version_*/<name>`` of the run, parsed."""
    path = newest(run, name)
    return json.loads(path.read_text()) if path else None


def write_report(run: Path, out: Path) -> Path:
    """Write the plots, ``report.md`` and ``index.html`` for ``run`` into ``out``; returns the report's path."""
    ledger, metrics, results = read_ledger(run), read_train_metrics(run), read_newest(run, "results.json")
    retention = read_newest(run, "forgetting.json")
    rounds = json.loads((run / "rounds.json").read_text()) if (run / "rounds.json").is_file() else None
    if not (ledger or results or rounds):
        raise FileNotFoundError(
            f"{run}: no self_edits.jsonl, logs/version_*/results.json or rounds.json; is it the "
            "trainer.default_root_dir of a `seal fit` or `seal test`?"
        )
    out.mkdir(parents=True, exist_ok=True)
    charts: list[Path] = []

    def image(path: Path | None, alt: str) -> str:
        if path is None:
            return ""
        charts.append(path)
        return f"![{alt}]({path.name})"

    lines = [f"# SEAL run report: `{run}`", "", "Browse every self-edit in [index.html](index.html).", ""]
    if rounds:
        lines += [
            "## Validation by ReST-EM round",
            "",
            "```",
            format_table(rounds["summary"], "validation by round"),
            "```",
            "",
            image(plot_conditions(rounds, out, "Validation by round", "rounds.png"), "rounds"),
            "",
            image(plot_deltas(rounds, out, "Validation by round", "rounds_deltas.png"), "rounds: paired"),
            "",
        ]
    if results:
        title = f"{results['stage']} (step {results['global_step']})"
        lines += [
            "```",
            format_table(results["summary"], title, results.get("labels")),
            "```",
            "",
            image(plot_conditions(results, out, title), "conditions"),
            "",
            image(plot_deltas(results, out, title), "paired differences"),
            "",
        ]
    if retention:
        lines += [
            "## Forgetting",
            "",
            "```",
            format_matrix(retention),
            "```",
            "",
            image(plot_forgetting(retention, out), "forgetting"),
            "",
        ]
    if ledger:
        lines += self_edit_section(ledger, metrics, out, image)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    write_page(run, out, ledger, results, charts)
    return path


def self_edit_section(ledger: list[dict], metrics: list[dict[str, float]], out: Path, image) -> list[str]:
    """The ledger's summary, plots, and best and worst self-edits as markdown lines."""
    kept = sum(r["kept"] for r in ledger)
    failed = sum("error" in r for r in ledger)
    lines = [
        "## Self-edits",
        "",
        f"{len(ledger)} self-edits over {len({r['epoch'] for r in ledger})} round(s) and "
        f"{len({r['context_id'] for r in ledger})} contexts; {kept} kept, {failed} failed.",
        "",
        image(plot_rewards(ledger, out), "rewards"),
        "",
        image(plot_length_vs_reward(ledger, out), "length vs reward"),
        "",
    ]
    if metrics:
        lines += [image(plot_training(metrics, out), "training"), ""]
    scored = sorted((r for r in ledger if "error" not in r), key=lambda r: r["reward"], reverse=True)
    for title, picked in (("Best self-edits", scored[:SHOWN]), ("Worst self-edits", scored[::-1][:SHOWN])):
        lines += [f"## {title}", ""]
        for r in picked:
            text = r["text"] if len(r["text"]) <= QUOTE_CHARS else r["text"][:QUOTE_CHARS] + " …"
            lines += [
                f"**{r['context_id']}**, round {r['epoch']}, sample {r['sample']}: reward {r['reward']:+.3f} "
                f"(before {r['baseline']:.3f}, after {r['post']:.3f}){' — kept' if r['kept'] else ''}",
                "",
                "```",
                text,
                "```",
                "",
            ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="seal report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="the run's trainer.default_root_dir")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, args.output or args.run_dir / "report")
    print(f"wrote {path}, its plots and {path.parent / 'index.html'}")
