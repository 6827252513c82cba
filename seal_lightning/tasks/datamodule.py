"""ContextDataModule: the base of the task DataModules, with a training order that survives a kill.

Training contexts are drawn by a ``DistributedSampler`` (one replica when not distributed) whose
order depends only on ``(seed, epoch)``. The DataModule's state in a checkpoint records how many
batches of which epoch were trained, so a run resumed from a mid-epoch checkpoint skips exactly
those and sees the rest in the same order as an uninterrupted run. Under DDP the sampler drops the
last ``len % world_size`` contexts of each (shuffled) epoch so no context is trained twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, DistributedSampler


def collate_contexts(records: list[dict]) -> dict[str, list[dict]]:
    """Batch records as ``{"contexts": [record, ...]}``."""
    return {"contexts": list(records)}


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose first pass may start part-way: ``start = (epoch, samples to skip)``.

    It sets its own epoch for that first pass because Lightning draws the first batch before it
    calls ``set_epoch`` on a resumed run.
    """

    def __init__(self, dataset: Sequence, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=num_replicas > 1
        )
        self.start: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self.start is not None:
            (self.epoch, skip), self.start = self.start, None
        return itertools.islice(super().__iter__(), skip, None)


class ContextDataModule(L.LightningDataModule):
    """Train / val / test splits of context records; batches are ``{"contexts": [record, ...]}``.

    Subclasses fill ``train_set``, ``val_set`` and ``test_set`` in ``setup``; ``predict_split`` names
    the one ``seal predict`` writes self-edits for.
    """

    SPLITS = ("train", "val", "test")

    def __init__(self, batch_size: int, seed: int, num_workers: int = 0, predict_split: str = "test") -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size}, {num_workers}")
        if predict_split not in self.SPLITS:
            raise ValueError(f"data.predict_split: {predict_split!r} is not one of {list(self.SPLITS)}")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.predict_split = predict_split
        self.train_set: Sequence[dict] | None = None
        self.val_set: Sequence[dict] | None = None
        self.test_set: Sequence[dict] | None = None
        self._resume: dict | None = None

    def train_dataloader(self) -> DataLoader:
        split = self._split(self.train_set)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = ResumableSampler(split, world, rank, self.seed)
        sampler.start = self._start(sampler)
        return DataLoader(
            split,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_contexts,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader(getattr(self, f"{self.predict_split}_set"))

    def _loader(self, split: Sequence[dict] | None) -> DataLoader | list:
        """A DataLoader over ``split``, or ``[]`` for an empty split (Lightning then skips the loop)."""
        split = self._split(split)
        if len(split) == 0:
            return []
        return DataLoader(split, batch_size=self.batch_size, collate_fn=collate_contexts, num_workers=self.num_workers)

    def _split(self, split: Sequence[dict] | None) -> Sequence[dict]:
        if split is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before requesting a dataloader")
        return split

    # --- mid-epoch resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where training stands: the epoch and the batches of it already trained (this rank's)."""
        if self.trainer is None or self.trainer.state.fn != TrainerFn.FITTING:  # validation inside fit counts
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "epoch": self.trainer.current_epoch,
            "batches": done,
            "batch_size": self.batch_size,
            "world_size": self.trainer.world_size,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict or None

    def _start(self, sampler: ResumableSampler) -> tuple[int, int] | None:
        state, self._resume = self._resume, None
        if state is None:
            return None
        epoch, skip = state["epoch"], state["batches"] * state["batch_size"]
        if skip >= sampler.num_samples:  # the checkpoint closed its epoch
            return epoch + 1, 0
        if (state["batch_size"], state["world_size"]) != (self.batch_size, sampler.num_replicas):
            raise ValueError(
                f"the checkpoint stopped mid-epoch with data.batch_size={state['batch_size']} on "
                f"{state['world_size']} process(es); resume it with the same, or from an end-of-epoch checkpoint"
            )
        return epoch, skip
