"""``SelfEditWriter``: ``seal predict``'s self-edits to a JSONL file of ``{"context_id", "text"}``, the
format ``data.init_args.synthetic`` reads (paper Table 2's "passage + synthetic data" row, written by
another, e.g. larger, model: ``--model.model`` of the predict run)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from ..utils import gather


class SelfEditWriter(BasePredictionWriter):
    """Writes every predicted self-edit, once, at the end of ``seal predict``.

    Args:
        output: the JSONL file to write (its directory is created).
    """

    def __init__(self, output: str) -> None:
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: list, batch_indices: list
    ) -> None:
        rows = {row["context_id"]: row for batch in predictions for row in batch}  # padded ranks repeat one
        rows = {r["context_id"]: r for r in gather(list(rows.values()))}
        if trainer.is_global_zero:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
