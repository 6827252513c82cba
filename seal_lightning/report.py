"""``seal report RUN_DIR``: PNG plots and a ``report.md`` from a run's ledger and logged metrics.

Reads ``RUN_DIR/self_edits.jsonl`` (the ledger), every ``RUN_DIR/logs/version_*/metrics.csv``
(a resumed run logs to a new version) and the newest ``results.json``, and writes to
``RUN_DIR/report/`` (or ``--output``):

* ``rewards.png``: the reward distribution of each round (epoch);
* ``training.png``: mean and max reward and the kept fraction per training step;
* ``conditions.png``: each condition's score with standard-error bars (the result table);
* ``length_vs_reward.png``: self-edit length against reward;
* ``report.md``: the table, the training summary, the plots, and the best and worst self-edits.
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

from .results import format_table  # noqa: E402

SHOWN = 3  # best and worst self-edits quoted in report.md
QUOTE_CHARS = 700


def read_ledger(run: Path) -> list[dict]:
    path = run / "self_edits.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ledger; is {run} the trainer.default_root_dir of a `seal fit`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_train_metrics(run: Path) -> list[dict[str, float]]:
    """Rows of every metrics.csv that carry training metrics, by step (a resumed run's versions merged)."""
    rows: dict[int, dict[str, float]] = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])):
        for row in csv.DictReader(path.open()):
            if row.get("train/reward_mean"):
                rows[int(row["step"])] = {k: float(v) for k, v in row.items() if v}
    return [rows[step] for step in sorted(rows)]


def read_results(run: Path) -> dict | None:
    paths = sorted(run.glob("logs/version_*/results.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(paths[-1].read_text()) if paths else None


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


def plot_conditions(results: dict, out: Path) -> Path:
    summary, labels = results["summary"], results.get("labels", {})
    metrics = [m for m in next(iter(summary.values())) if m != "n" and not m.endswith("_se")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [c + i * width for c in range(len(summary))]
        ax.bar(xs, [v[metric] for v in summary.values()], width, yerr=[v[f"{metric}_se"] for v in summary.values()],
               capsize=3, label=metric)
    ax.set_xticks([c + width * (len(metrics) - 1) / 2 for c in range(len(summary))],
                  [labels.get(c, c) for c in summary], rotation=20, ha="right")
    n = next(iter(summary.values()))["n"]
    ax.set(ylabel="score (mean ± s.e.)", title=f"{results['stage']} after step {results['global_step']} ({n} contexts)")
    ax.legend()
    return _save(fig, out / "conditions.png")


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
    """Write the plots and ``report.md`` for ``run`` into ``out``; returns the report's path."""
    ledger, metrics, results = read_ledger(run), read_train_metrics(run), read_results(run)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# SEAL run report: `{run}`", ""]
    if results:
        labelled = {results.get("labels", {}).get(c, c): v for c, v in results["summary"].items()}
        lines += ["```", format_table(labelled, f"{results['stage']} (step {results['global_step']})"), "```", "",
                  f"![conditions]({plot_conditions(results, out).name})", ""]
    kept = sum(r["kept"] for r in ledger)
    failed = sum("error" in r for r in ledger)
    lines += ["## Self-edits", "",
              f"{len(ledger)} self-edits over {len({r['epoch'] for r in ledger})} round(s) and "
              f"{len({r['context_id'] for r in ledger})} contexts; {kept} kept, {failed} failed.", ""]
    if ledger:
        lines += [f"![rewards]({plot_rewards(ledger, out).name})", "",
                  f"![length vs reward]({plot_length_vs_reward(ledger, out).name})", ""]
    if metrics:
        lines += [f"![training]({plot_training(metrics, out).name})", ""]
    scored = sorted((r for r in ledger if "error" not in r), key=lambda r: r["reward"], reverse=True)
    for title, picked in (("Best self-edits", scored[:SHOWN]), ("Worst self-edits", scored[::-1][:SHOWN])):
        lines += [f"## {title}", ""]
        for r in picked:
            text = r["text"] if len(r["text"]) <= QUOTE_CHARS else r["text"][:QUOTE_CHARS] + " …"
            lines += [f"**{r['context_id']}**, round {r['epoch']}, sample {r['sample']}: reward {r['reward']:+.3f} "
                      f"(before {r['baseline']:.3f}, after {r['post']:.3f}){' — kept' if r['kept'] else ''}", "",
                      "```", text, "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="seal report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the run's trainer.default_root_dir (holds self_edits.jsonl)")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, args.output or args.run_dir / "report")
    print(f"wrote {path} and its plots")
