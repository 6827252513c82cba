"""A callback for the DDP and FSDP tests: every rank reports a checksum of its trainable weights (whole,
when sharded) at the end of fit."""

import json
from pathlib import Path

import lightning as L

from seal_lightning.utils import gather


class WeightProbe(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        whole = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in pl_module.parameters() if p.requires_grad]
        sums = [float(p.double().sum()) for p in whole]
        every = gather([{"rank": trainer.global_rank, "sums": sums}])
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(every))
