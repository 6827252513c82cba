"""The PNG plots of ``seal report`` (matplotlib, an optional dependency: ``pip install "seal_lightning[report]"``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..evaluation.results import metric_names  # noqa: E402


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
        ax.bar(
            xs,
            [v[metric] for v in summary.values()],
            width,
            yerr=[v[f"{metric}_se"] for v in summary.values()],
            capsize=3,
            label=metric,
        )
    ax.set_xticks(
        [c + width * (len(metrics) - 1) / 2 for c in range(len(summary))],
        [labels.get(c, c) for c in summary],
        rotation=20,
        ha="right",
    )
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
    ax.set_xticks(
        [c + width * (len(metrics) - 1) / 2 for c in range(len(paired))],
        [labels.get(c, c) for c in paired],
        rotation=20,
        ha="right",
    )
    ax.set(ylabel=f"Δ to {labels.get(reference, reference)} (95% CI)", title=f"{title}: paired differences")
    ax.legend()
    return _save(fig, out / name)


def plot_forgetting(record: dict, out: Path) -> Path:
    """Rows: before any update, then after each sequential update; columns: the contexts."""
    n = len(record["contexts"])
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * n, 1.5 + 0.5 * (n + 1)))
    fig.colorbar(_retention(ax, record, f"Retention: {record['metric']} per context"), ax=ax, label=record["metric"])
    return _save(fig, out / "forgetting.png")


def plot_retention(records: dict[str, dict], out: Path, name: str = "retention.png") -> Path:
    """``seal adapt --sequential``'s retention matrices (one per strategy) side by side, one colour scale."""
    n = len(next(iter(records.values()))["contexts"])
    fig, axes = plt.subplots(1, len(records), figsize=(len(records) * (1.5 + 0.45 * n), 1.5 + 0.4 * (n + 1)))
    top = max(max(map(max, [r["before"][r["metric"]], *r["after"][r["metric"]]])) for r in records.values()) or 1.0
    for ax, (strategy, record) in zip(axes if len(records) > 1 else [axes], records.items()):
        image = _retention(ax, record, strategy, top, numbers=n <= 12)
    fig.colorbar(image, ax=axes, label=next(iter(records.values()))["metric"])
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out / name


def _retention(ax, record: dict, title: str, top: float | None = None, numbers: bool = True):
    """One retention matrix as a heatmap on ``ax``: the rows before and after each update."""
    metric = record["metric"]
    matrix = [record["before"][metric], *record["after"][metric]]
    n, top = len(record["contexts"]), top or max(map(max, matrix)) or 1.0
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top, aspect="auto")
    for i, row in enumerate(matrix if numbers else []):
        for j, value in enumerate(row):
            color = "white" if value < 0.6 * top else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
    ax.set_yticks(range(n + 1), ["before"] + [f"after {i + 1}" for i in range(n)])
    ax.set(xlabel="context (in update order)", ylabel="sequential updates", title=title)
    return image


def plot_length_vs_reward(ledger: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [r for r in ledger if "error" not in r]
    failed = [r for r in ledger if "error" in r]
    ax.scatter([len(r["text"].split()) for r in ok], [r["reward"] for r in ok], s=14, label="scored")
    if failed:
        ax.scatter(
            [len(r["text"].split()) for r in failed],
            [r["reward"] for r in failed],
            s=14,
            marker="x",
            color="tab:red",
            label="failed (0)",
        )
    ax.set(xlabel="self-edit length (words)", ylabel="reward", title="Self-edit length vs reward")
    ax.legend()
    return _save(fig, out / "length_vs_reward.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
