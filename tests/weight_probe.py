"""A callback for the DDP test: every rank reports a checksum of its trainable weights at the end of fit."""

import json
from pathlib import Path

import lightning as L

from seal_lightning.utils import gather


class WeightProbe(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums = [float(p.double().sum()) for p in pl_module.parameters() if p.requires_grad]
        every = gather([{"rank": trainer.global_rank, "sums": sums}])
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(every))
