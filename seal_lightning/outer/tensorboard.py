"""Per-round TensorBoard summaries of the E-step: the reward histogram and the kept self-edits as text.

The per-batch scalars (``train/reward_mean``, ``train/reward_max``, ``train/kept_fraction``, ...)
reach TensorBoard through ``log_dict`` like any metric; these two need the logger's writer.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def kept_markdown(records: list[dict]) -> str:
    """The kept self-edits as markdown, each under its context and reward (texts as code blocks)."""
    kept = [r for r in records if r.get("kept")]
    blocks = [
        f"**{r['context_id']}** sample {r['sample']}, reward {r['reward']:+.3f}\n\n    "
        + r["text"].replace("\n", "\n    ")
        for r in kept
    ]
    return "\n\n".join(blocks) or "(no self-edit kept)"


def tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def log_round(boards: list[TensorBoardLogger], round_: int, records: list[dict]) -> None:
    """Write round ``round_``'s reward histogram and kept self-edits to each TensorBoard logger."""
    if not records:
        return
    rewards = torch.tensor([float(r["reward"]) for r in records])
    for board in boards:
        board.experiment.add_histogram("train/reward", rewards, global_step=round_)
        board.experiment.add_text("train/kept_self_edits", kept_markdown(records), global_step=round_)
        board.experiment.flush()
