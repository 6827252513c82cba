"""Few-shot ARC (SEAL §4.1): demonstrations -> a recipe self-edit (augmentations, TTT hyperparameters) -> solved?"""

from .datamodule import ArcDataModule
from .sources import load_arc
from .task import ArcTask

__all__ = ["ArcDataModule", "ArcTask", "load_arc"]
