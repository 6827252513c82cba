"""SelfEditCallback: the E-step of ReST-EM, run before every training batch.

For each batch of contexts it samples K self-edits per context from the current policy, runs
one inner LoRA update per self-edit, rewards it by the post-update score (or its gain over the
pre-update score), keeps the best-of-K above a threshold (or all above it), writes every
self-edit to the ledger and attaches the kept (prompt, self-edit) pairs to the batch for
``SEALPolicy.training_step``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from .ledger import Ledger
from .policy import Outcome, SEALPolicy, derive_seed


def select(rewards: list[float], keep: str, threshold: float) -> list[bool]:
    """Which of one context's K self-edits to keep: the first best above ``threshold``, or all above it."""
    if keep == "all":
        return [r > threshold for r in rewards]
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    return [i == best and rewards[i] > threshold for i in range(len(rewards))]


class SelfEditCallback(L.Callback):
    """Sample, evaluate, reward and filter self-edits for each training batch.

    Args:
        k: self-edits sampled per context.
        reward: ``gain`` (post-update minus pre-update score) or ``post`` (post-update score).
        keep: ``best_of_k`` (the best self-edit per context, if above threshold) or ``all`` above it.
        threshold: a kept self-edit's reward must be strictly greater than this.
        seed: seed of sampling and inner-loop initialisation (mixed with epoch and batch index).
        ledger: file name of the ledger in the run directory (``trainer.default_root_dir``).
    """

    def __init__(
        self,
        k: int = 5,
        reward: Literal["gain", "post"] = "gain",
        keep: Literal["best_of_k", "all"] = "best_of_k",
        threshold: float = 0.0,
        seed: int = 0,
        ledger: str = "self_edits.jsonl",
    ) -> None:
        if k < 1:
            raise ValueError(f"self_edit.k must be >= 1, got {k}")
        self.k, self.reward, self.keep, self.threshold, self.seed = k, reward, keep, threshold, seed
        self.ledger_name = ledger
        self.ledger: Ledger | None = None
        self._offset = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: SEALPolicy) -> None:
        if trainer.is_global_zero:
            self.ledger = Ledger(Path(trainer.default_root_dir) / self.ledger_name, self._offset)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: SEALPolicy, batch: dict, batch_idx: int) -> None:
        start = time.perf_counter()
        contexts = batch["contexts"]
        seed = derive_seed(self.seed, trainer.current_epoch, batch_idx)
        edits = pl_module.sample_self_edits(contexts, self.k, seed)
        baseline, outcomes = pl_module.score_updates(contexts, edits, seed)
        metric = pl_module.task.metric
        kept, records, rewards, losses, errors = [], [], [], [], 0
        for context, before, texts, row in zip(contexts, baseline, edits, outcomes):
            row_rewards = [self._reward(before.scores[metric], o, metric) for o in row]
            keep = select(row_rewards, self.keep, self.threshold)
            prompt = pl_module.format_prompt(pl_module.task.self_edit_prompt(context))
            kept += [(prompt, text) for text, k in zip(texts, keep) if k]
            for sample, (text, outcome, reward, k) in enumerate(zip(texts, row, row_rewards, keep)):
                record = {
                    "context_id": context["id"], "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                    "sample": sample, "text": text, "baseline": before.scores[metric], "post": outcome.scores[metric],
                    "reward": reward, "kept": k, "inner_loss": _loss(outcome), "seconds": _seconds(outcome),
                }
                if outcome.error:
                    record["error"] = outcome.error
                    errors += 1
                    rank_zero_warn(f"self-edit {sample} of context {context['id']} scored 0: {outcome.error}")
                records.append(record)
            rewards += row_rewards
            losses += [o.result.loss for o in row if o.error is None and o.result is not None]
        if self.ledger is not None:
            self.ledger.append(records)
        batch["kept"] = kept
        n = len(contexts)
        pl_module.log_dict({
            "train/reward_mean": sum(rewards) / len(rewards), "train/reward_max": max(rewards),
            "train/kept_fraction": len(kept) / len(rewards), "train/failed": float(errors),
            "train/inner_loss": sum(losses) / len(losses) if losses else math.nan,
            "train/estep_seconds": time.perf_counter() - start,
        }, batch_size=n, prog_bar=False)

    def _reward(self, before: float, outcome: Outcome, metric: str) -> float:
        if outcome.error is not None:
            return 0.0
        post = outcome.scores[metric]
        return post - before if self.reward == "gain" else post

    def state_dict(self) -> dict:
        return {"ledger_offset": self.ledger.sync() if self.ledger is not None else self._offset}

    def load_state_dict(self, state_dict: dict) -> None:
        self._offset = state_dict["ledger_offset"]


def _loss(outcome: Outcome) -> float | None:
    loss = outcome.result.loss if outcome.result is not None else math.nan
    return None if math.isnan(loss) else loss


def _seconds(outcome: Outcome) -> float:
    return round(outcome.result.seconds, 3) if outcome.result is not None else 0.0
