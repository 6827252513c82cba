"""KnowledgeDataModule: passages split by passage into train / val / test."""

from __future__ import annotations

import random

import datasets

from ..datamodule import ContextDataModule
from .sources import load_passages, load_synthetic

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "questions": [{"question": datasets.Value("string"), "answers": [datasets.Value("string")]}],
        "synthetic": datasets.Value("string"),  # externally written self-edit ("" when none)
    }
)


class KnowledgeDataModule(ContextDataModule):
    """Passages split by passage into train / val / test; batches are ``{"contexts": [record, ...]}``."""

    def __init__(
        self,
        path: str = "builtin:squad",
        train_size: int | None = None,
        val_size: int = 8,
        test_size: int = 8,
        batch_size: int = 4,
        seed: int = 0,
        num_workers: int = 0,
        synthetic: str | None = None,
        predict_split: str = "test",
        eval_path: str | None = None,
    ) -> None:
        """
        Args:
            path: Passage source: ``builtin:squad``, ``builtin:fictional[:N]``, ``hf:NAME[:SPLIT]``,
                or a local JSON / JSONL file of ``{"id", "title", "context", "questions"}`` records.
            train_size: Number of training passages; ``None`` uses all passages left after val and test.
            val_size: Number of validation passages; 0 disables validation.
            test_size: Number of test passages.
            batch_size: Passages per batch.
            seed: Seed for the passage shuffle that makes the splits and for the training-order shuffle.
            num_workers: DataLoader worker processes.
            synthetic: JSON / JSONL file of ``{"context_id", "text"}``: externally written self-edits,
                scored by the ``synthetic`` condition (``model.eval.conditions``).
            predict_split: The split ``seal predict`` writes self-edits for (``train``, ``val``, ``test``).
            eval_path: Another source for the test and validation passages (as the paper trains on
                SQuAD train passages and evaluates on SQuAD dev ones, e.g. ``builtin:squad``); null:
                they are held out of ``path``.
        """
        super().__init__(batch_size, seed, num_workers, predict_split)
        for field, value in [("val_size", val_size), ("test_size", test_size)]:
            if value < 0:
                raise ValueError(f"{field} must be >= 0, got {value}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be >= 1 or None, got {train_size}")
        self.save_hyperparameters()
        self.path, self.train_size, self.val_size, self.test_size = path, train_size, val_size, test_size
        self.synthetic, self.eval_path = synthetic, eval_path

    def setup(self, stage: str | None = None) -> None:
        """Load the passages once and split them by passage with a seeded shuffle."""
        if self.train_set is not None:
            return
        held_out, train = self.test_size + self.val_size, f"train_size={self.train_size or 'at least 1'}"
        split = f"test_size={self.test_size} + val_size={self.val_size}"
        if self.eval_path:
            passages = self._load(self.eval_path, held_out, split)[:held_out]
            trained = self._load(self.path, self.train_size or 1, train)
            if {p["id"] for p in passages} & {p["id"] for p in trained}:
                raise ValueError(f"{self.eval_path} and {self.path} share passage ids: train and test would overlap")
            passages += trained
        else:
            passages = self._load(self.path, held_out + (self.train_size or 1), f"{split} + {train}")
        if self.synthetic:
            texts = load_synthetic(self.synthetic)
            if not texts.keys() & {p["id"] for p in passages}:
                raise ValueError(f"{self.synthetic}: no context_id matches a passage of {self.eval_path or self.path}")
            passages = [{**p, "synthetic": texts.get(p["id"], "")} for p in passages]
        self.test_set = _dataset(passages[: self.test_size])
        self.val_set = _dataset(passages[self.test_size : held_out])
        self.train_set = _dataset(passages[held_out:][: self.train_size])

    def _load(self, path: str, needed: int, sizes: str) -> list[dict]:
        """``path``'s passages in a seeded shuffle; at least ``needed`` of them (``sizes`` says why)."""
        passages = load_passages(path)
        if len(passages) < needed:
            raise ValueError(f"{path}: {len(passages)} passages, but {sizes} needs {needed}")
        random.Random(self.seed).shuffle(passages)
        return passages


def _dataset(records: list[dict]) -> datasets.Dataset:
    """A ``datasets.Dataset`` with a fixed schema (so empty splits keep their columns)."""
    return datasets.Dataset.from_dict({key: [r.get(key, "") for r in records] for key in FEATURES}, features=FEATURES)
