"""SelfEditCallback: the E-step of ReST-EM, run before every training batch.

For each batch of contexts it has the policy's ``Rollout`` sample K self-edits per context and
score one inner LoRA update per self-edit, rewards each (``rewards.reward``), turns a context's K
rewards into the M-step's examples by the policy's outer algorithm (``objective``: for ReST-EM the
best-of-K above a threshold or all above it, ``rewards.select``), writes every self-edit to the
ledger (with its advantage or preference where there is one) and attaches the examples to the
batch for ``SEALPolicy.training_step``. Under
DDP each rank runs its own contexts; the records and kept pairs of all ranks are gathered, so the
logged numbers cover the whole batch and rank 0 writes the ledger. Sampling's, scoring's and the M-step's
wall seconds and peak resident memory are logged per batch (``train/sample_*``, ``train/score_*``,
``train/mstep_*``).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..rollout import Outcome
from ..utils import Span, derive_seed, gather
from .ledger import Ledger
from .objective import examples
from .progress import inner_progress
from .rewards import Reward, reward, select
from .tensorboard import log_round, tensorboards


class SelfEditCallback(L.Callback):
    """Sample, evaluate, reward and filter self-edits for each training batch.

    Args:
        k: self-edits sampled per context.
        reward: ``gain`` (post-update minus pre-update score), ``over_context`` (post-update score
            minus that of an update on the context alone, one more inner update per context: a
            self-edit earns a positive reward only by teaching more than the passage) or ``post``.
        keep: ``best_of_k`` (the best self-edit per context, if above threshold) or ``all`` above it.
        threshold: a kept self-edit's reward must be strictly greater than this.
        seed: seed of sampling and inner-loop initialisation (mixed with the epoch and the batch's context
            ids); unset, ``seal`` takes ``seed_everything`` (0 outside the CLI).
        ledger: file name of the ledger in the run directory (``trainer.default_root_dir``).
        max_failed_fraction: stop the run when more than this fraction of a batch's self-edits
            failed (no usable text, non-finite inner loss, out of memory, ...); each failure
            otherwise scores 0 and its reason goes to the ledger.
        explore: each training self-edit is, with this probability, replaced by one drawn uniformly
            from the task's valid self-edits (``Task.self_edit_choices``, e.g. ``ArcTask(constrained:
            true)``): epsilon-greedy exploration for a policy whose samples are nearly all alike
            (ledger ``"explored": true``). Evaluation always samples from the policy.
    """

    def __init__(
        self,
        k: int = 5,
        reward: Reward = "gain",
        keep: Literal["best_of_k", "all"] = "best_of_k",
        threshold: float = 0.0,
        seed: int | None = None,
        ledger: str = "self_edits.jsonl",
        max_failed_fraction: float = 0.5,
        explore: float = 0.0,
    ) -> None:
        if k < 1:
            raise ValueError(f"self_edit.k must be >= 1, got {k}")
        self.k, self.reward, self.keep, self.threshold = k, reward, keep, threshold
        self.seed = 0 if seed is None else seed
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"self_edit.max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"self_edit.explore must be in [0, 1], got {explore}")
        self.ledger_name, self.max_failed_fraction, self.explore = ledger, max_failed_fraction, explore
        self.ledger: Ledger | None = None
        self._offset = 0
        self._mstep: Span | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.outer.algorithm != "rest_em" and self.k < 2:
            raise ValueError(f"model.outer.algorithm={pl_module.outer.algorithm} compares a context's self-edits: "
                             f"it needs self_edit.k >= 2, got {self.k}")
        if self.explore and not pl_module.rollout.task.self_edit_choices():
            raise ValueError(f"self_edit.explore={self.explore} needs a task with a finite set of valid self-edits "
                             f"(e.g. ArcTask with constrained: true); {type(pl_module.rollout.task).__name__} has none")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not in on_fit_start: under a model-parallel strategy the checkpoint (and its ledger offset)
        # is restored after that hook
        if trainer.is_global_zero:
            self.ledger = Ledger(Path(trainer.default_root_dir) / self.ledger_name, self._offset)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        """Sample, score, reward and select the batch's self-edits; ``batch["kept"]`` = the M-step's
        examples (``objective.examples``: kept pairs for ReST-EM)."""
        start = time.perf_counter()
        rollout, contexts = pl_module.rollout, batch["contexts"]
        seed = derive_seed(self.seed, trainer.current_epoch, [c["id"] for c in contexts])
        with rollout.whole_weights():
            with Span() as sampling:
                prompts, edits = rollout.sample(contexts, self.k, seed)
            explored = self._explore(edits, rollout.task.self_edit_choices(), seed)
            alone = self.reward == "over_context"
            updates = len(contexts) * (self.k + alone) * rollout.inner.repeats
            with inner_progress(trainer, updates) as on_done, Span() as scoring:
                baseline, outcomes = rollout.score_updates(contexts, edits, seed, on_done, "context" if alone else "before")
        metric = rollout.task.metric
        kept, records = [], []
        for context, prompt, before, texts, row, flags in zip(contexts, prompts, baseline, edits, outcomes, explored):
            row_rewards = [reward(before, o, metric, self.reward) for o in row]
            failed = [o.error is not None for o in row]
            chosen, notes = examples(pl_module.outer, prompt, texts, row_rewards, failed,
                                     select(row_rewards, self.keep, self.threshold, failed))
            kept += chosen
            for sample, (text, outcome, r, note, x) in enumerate(zip(texts, row, row_rewards, notes, flags)):
                records.append({
                    "context_id": context["id"], "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                    "sample": sample, "rank": trainer.global_rank, "text": text, "baseline": before.scores[metric],
                    "post": outcome.scores[metric], "reward": r, **note, "inner_loss": _loss(outcome),
                    "seconds": _seconds(outcome), **({"explored": True} if x else {}),
                    **({"error": outcome.error} if outcome.error else {}),
                })
        records, batch["kept"] = gather(records), gather(kept)  # every rank: the whole batch, in rank order
        if self.ledger is not None:
            self.ledger.append(records)
        failed = [r for r in records if "error" in r]
        for r in failed:
            rank_zero_warn(f"self-edit {r['sample']} of context {r['context_id']} scored 0: {r['error']}")
        rewards = [r["reward"] for r in records]
        losses = [r["inner_loss"] for r in records if r["inner_loss"] is not None]
        pl_module.log_dict({
            "train/reward_mean": sum(rewards) / len(rewards), "train/reward_max": max(rewards),
            "train/kept_fraction": len(batch["kept"]) / len(rewards), "train/failed": float(len(failed)),
            "train/inner_loss": sum(losses) / len(losses) if losses else math.nan,
            "train/estep_seconds": time.perf_counter() - start, **sampling.stats("train/sample_"),
            **scoring.stats("train/score_"),
        }, batch_size=len(records) // self.k, prog_bar=False)
        if len(failed) > self.max_failed_fraction * len(records):
            reasons = Counter(r["error"] for r in failed).most_common(3)
            raise RuntimeError(
                f"{len(failed)} of {len(records)} self-edits in batch {batch_idx} of epoch {trainer.current_epoch} "
                f"failed (self_edit.max_failed_fraction={self.max_failed_fraction}); most common: {reasons}"
            )
        self._mstep = Span().start()  # the M-step (training_step) runs next

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        if self._mstep is not None:
            self._mstep.stop()
            pl_module.log_dict(self._mstep.stats("train/mstep_"), batch_size=len(batch["contexts"]))
            self._mstep = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The round's reward histogram and kept self-edits to TensorBoard (from the ledger, so a
        resumed round is whole; read only when there is a TensorBoard logger)."""
        boards = tensorboards(trainer)
        if self.ledger is not None and boards:
            epoch = trainer.current_epoch
            log_round(boards, epoch, [r for r in self.ledger.read() if r.get("epoch") == epoch])

    def _explore(self, edits: list[list[str]], choices: list[str] | None, seed: int) -> list[list[bool]]:
        """Replace each self-edit in place, with probability ``explore``, by a uniformly drawn choice."""
        rng = random.Random(derive_seed(seed, "explore"))
        flags = [[rng.random() < self.explore for _ in row] for row in edits]
        for row, row_flags in zip(edits, flags):
            for i, flag in enumerate(row_flags):
                if flag:
                    row[i] = rng.choice(choices)
        return flags

    def state_dict(self) -> dict:
        """The ledger's synced size and the RNG states (kept pairs never outlive their batch)."""
        offset = self.ledger.sync() if self.ledger is not None else self._offset
        return {"ledger_offset": offset, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._offset = state_dict["ledger_offset"]
        if "torch_rng" in state_dict:  # checkpoints written before the RNG states were saved lack them
            torch.set_rng_state(state_dict["torch_rng"])
            random.setstate(state_dict["python_rng"])


def _loss(outcome: Outcome) -> float | None:
    loss = outcome.result.loss if outcome.result is not None else math.nan
    return None if math.isnan(loss) else loss


def _seconds(outcome: Outcome) -> float:
    return round(outcome.result.seconds, 3) if outcome.result is not None else 0.0
