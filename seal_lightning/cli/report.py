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

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..evaluation import format_matrix, format_table  # noqa: E402
from ..evaluation.results import metric_names  # noqa: E402
from ..outer.ledger import read_ledger as read_ledger_file  # noqa: E402
from .report_page import newest, write_page  # noqa: E402

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


def plot_rewards(ledger: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for epoch in sorted({r["epoch"] for r in ledger}):
        rewards = [r["reward"] for r in ledger if r["epoch"] == epoch]
        ax.hist(rewards, bins=20, alpha=0.6, label=f"round {epoch} (n={len(rewards)})")
    ax.set(xlabel="reward", ylabel="self-edits", title="Reward distribution per round")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return _save(fig, out / "rewards.png")


def plot_training(metrics: list[dict[str, float]], out: Path) -> Path:
    steps = [m["step"] for m in metrics]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    top.plot(steps, [m["train/reward_mean"] for m in metrics], marker="o", label="mean reward")
    top.plot(steps, [m["train/reward_max"] for m in metrics], marker="^", label="max reward")
    top.axhline(0, color="grey", lw=0.5)
    top.set(ylabel="reward", title="E-step per training batch")
    top.legend()
    bottom.plot(steps, [m["train/kept_fraction"] for m in metrics], marker="s", color="tab:green")
    bottom.set(xlabel="optimiser step at the batch", ylabel="kept fraction", ylim=(0, 1.05))
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, out / "training.png")


def plotted_metrics(entries: list[dict]) -> list[str]:
    """The answer metrics every entry has: ``logprob`` (unbounded, some conditions lack it) stays in the table."""
    return [m for m in metric_names(entries[0]) if m != "logprob" and all(m in e for e in entries)]


def plot_conditions(results: dict, out: Path, title: str, name: str = "conditions.png") -> Path:
    summary, labels = results["summary"], results.get("labels", {})
    metrics = plotted_metrics(list(summary.values()))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [c + i * width for c in range(len(summary))]
        ax.bar(xs, [v[metric] for v in summary.values()], width, yerr=[v[f"{metric}_se"] for v in summary.values()],
               capsize=3, label=metric)
    ax.set_xticks([c + width * (len(metrics) - 1) / 2 for c in range(len(summary))],
                  [labels.get(c, c) for c in summary], rotation=20, ha="right")
    n = next(iter(summary.values()))["n"]
    ax.set(ylabel="score (mean ± s.e.)", title=f"{title} ({n} contexts)")
    ax.legend()
    return _save(fig, out / name)


def plot_deltas(results: dict, out: Path, title: str, name: str = "deltas.png") -> Path | None:
    """Each condition's paired difference to the reference condition, with bootstrap 95% intervals."""
    summary, labels = results["summary"], results.get("labels", {})
    paired = {c: v for c, v in summary.items() if "reference" in v}
    if not paired:
        return None
    metrics, reference = plotted_metrics(list(paired.values())), next(iter(paired.values()))["reference"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        means = [v[f"{metric}_delta"] for v in paired.values()]
        low = [m - v[f"{metric}_delta_ci95"][0] for m, v in zip(means, paired.values())]
        high = [v[f"{metric}_delta_ci95"][1] - m for m, v in zip(means, paired.values())]
        ax.bar([c + i * width for c in range(len(paired))], means, width, yerr=[low, high], capsize=3, label=metric)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks([c + width * (len(metrics) - 1) / 2 for c in range(len(paired))],
                  [labels.get(c, c) for c in paired], rotation=20, ha="right")
    ax.set(ylabel=f"Δ to {labels.get(reference, reference)} (95% CI)", title=f"{title}: paired differences")
    ax.legend()
    return _save(fig, out / name)


def plot_forgetting(record: dict, out: Path) -> Path:
    """Rows: before any update, then after each sequential update; columns: the contexts."""
    metric = record["metric"]
    matrix = [record["before"][metric], *record["after"][metric]]
    n, top = len(record["contexts"]), max(map(max, matrix)) or 1.0
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * n, 1.5 + 0.5 * (n + 1)))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top, aspect="auto")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 0.6 * top else "black")
    ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
    ax.set_yticks(range(n + 1), ["before"] + [f"after {i + 1}" for i in range(n)])
    ax.set(xlabel="context (in update order)", ylabel="sequential updates", title=f"Retention: {metric} per context")
    fig.colorbar(image, ax=ax, label=metric)
    return _save(fig, out / "forgetting.png")


def plot_length_vs_reward(ledger: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [r for r in ledger if "error" not in r]
    failed = [r for r in ledger if "error" in r]
    ax.scatter([len(r["text"].split()) for r in ok], [r["reward"] for r in ok], s=14, label="scored")
    if failed:
        ax.scatter([len(r["text"].split()) for r in failed], [r["reward"] for r in failed], s=14, marker="x",
                   color="tab:red", label="failed (0)")
    ax.set(xlabel="self-edit length (words)", ylabel="reward", title="Self-edit length vs reward")
    ax.legend()
    return _save(fig, out / "length_vs_reward.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run: Path, out: Path) -> Path:
    """Write the plots, ``report.md`` and ``index.html`` for ``run`` into ``out``; returns the report's path."""
    ledger, metrics, results = read_ledger(run), read_train_metrics(run), read_newest(run, "results.json")
    retention = read_newest(run, "forgetting.json")
    rounds = json.loads((run / "rounds.json").read_text()) if (run / "rounds.json").is_file() else None
    if not (ledger or results or rounds):
        raise FileNotFoundError(f"{run}: no self_edits.jsonl, logs/version_*/results.json or rounds.json; is it the "
                                "trainer.default_root_dir of a `seal fit` or `seal test`?")
    out.mkdir(parents=True, exist_ok=True)
    charts: list[Path] = []

    def image(path: Path | None, alt: str) -> str:
        if path is None:
            return ""
        charts.append(path)
        return f"![{alt}]({path.name})"

    lines = [f"# SEAL run report: `{run}`", "", "Browse every self-edit in [index.html](index.html).", ""]
    if rounds:
        lines += ["## Validation by ReST-EM round", "", "```", format_table(rounds["summary"], "validation by round"),
                  "```", "", image(plot_conditions(rounds, out, "Validation by round", "rounds.png"), "rounds"), "",
                  image(plot_deltas(rounds, out, "Validation by round", "rounds_deltas.png"), "rounds: paired"), ""]
    if results:
        title = f"{results['stage']} (step {results['global_step']})"
        lines += ["```", format_table(results["summary"], title, results.get("labels")), "```", "", image(plot_conditions(results, out, title), "conditions"),
                  "", image(plot_deltas(results, out, title), "paired differences"), ""]
    if retention:
        lines += ["## Forgetting", "", "```", format_matrix(retention), "```", "",
                  image(plot_forgetting(retention, out), "forgetting"), ""]
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
    lines = ["## Self-edits", "",
             f"{len(ledger)} self-edits over {len({r['epoch'] for r in ledger})} round(s) and "
             f"{len({r['context_id'] for r in ledger})} contexts; {kept} kept, {failed} failed.", "",
             image(plot_rewards(ledger, out), "rewards"), "", image(plot_length_vs_reward(ledger, out), "length vs reward"), ""]
    if metrics:
        lines += [image(plot_training(metrics, out), "training"), ""]
    scored = sorted((r for r in ledger if "error" not in r), key=lambda r: r["reward"], reverse=True)
    for title, picked in (("Best self-edits", scored[:SHOWN]), ("Worst self-edits", scored[::-1][:SHOWN])):
        lines += [f"## {title}", ""]
        for r in picked:
            text = r["text"] if len(r["text"]) <= QUOTE_CHARS else r["text"][:QUOTE_CHARS] + " …"
            lines += [f"**{r['context_id']}**, round {r['epoch']}, sample {r['sample']}: reward {r['reward']:+.3f} "
                      f"(before {r['baseline']:.3f}, after {r['post']:.3f}){' — kept' if r['kept'] else ''}", "",
                      "```", text, "```", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="seal report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the run's trainer.default_root_dir")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, args.output or args.run_dir / "report")
    print(f"wrote {path}, its plots and {path.parent / 'index.html'}")
