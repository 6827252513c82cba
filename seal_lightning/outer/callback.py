"""SelfEditCallback: the E-step of ReST-EM, run before every training batch.

For each batch of contexts it has the policy's ``Rollout`` sample K self-edits per context and
score one inner LoRA update per self-edit, rewards each by the named reward of ``model.outer``
(``rewards.REWARDS``), turns a context's K rewards into the M-step's examples by the outer
algorithm (``objective.examples``: for ReST-EM the best-of-K above a threshold or all above it),
writes every self-edit to the ledger (with its advantage or preference where there is one) and
attaches the examples to the batch (``batch["examples"]``) for ``SEALPolicy.training_step``. Under
DDP each rank runs its own contexts; the records and examples of all ranks are gathered, so the
logged numbers cover the whole batch and rank 0 writes the ledger. Sampling's, scoring's and the
M-step's wall seconds and peak resident memory are logged per batch (``train/sample_*``,
``train/score_*``, ``train/mstep_*``).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..rollout import Outcome
from ..utils import Span, derive_seed, gather
from .ledger import Ledger
from .objective import examples
from .progress import inner_progress
from .rewards import select
from .tensorboard import log_round, tensorboards


class SelfEditCallback(L.Callback):
    """Sample, evaluate, reward and filter self-edits for each training batch, as the policy's
    ``model.outer`` (``OuterConfig``) says.

    Args:
        seed: seed of sampling and inner-loop initialisation (mixed with the epoch and the batch's context
            ids); unset, ``seal`` takes ``seed_everything`` (0 outside the CLI).
        ledger: file name of the ledger in the run directory (``trainer.default_root_dir``).
    """

    def __init__(self, seed: int | None = None, ledger: str = "self_edits.jsonl") -> None:
        self.seed = 0 if seed is None else seed
        self.ledger_name = ledger
        self.ledger: Ledger | None = None
        self._offset = 0
        self._mstep: Span | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        explore = pl_module.outer.explore
        if explore and not pl_module.rollout.task.self_edit_choices():
            raise ValueError(
                f"model.outer.explore={explore} needs a task with a finite set of valid self-edits "
                f"(e.g. ArcTask with constrained: true); {type(pl_module.rollout.task).__name__} has none"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not in on_fit_start: under a model-parallel strategy the checkpoint (and its ledger offset)
        # is restored after that hook
        if trainer.is_global_zero:
            self.ledger = Ledger(Path(trainer.default_root_dir) / self.ledger_name, self._offset)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        """Sample, score, reward and select the batch's self-edits; ``batch["examples"]`` = the M-step's
        examples (``objective.examples``: kept pairs for ReST-EM)."""
        start = time.perf_counter()
        rollout, contexts, outer = pl_module.rollout, batch["contexts"], pl_module.outer
        score = outer.reward_fn
        seed = derive_seed(self.seed, trainer.current_epoch, [c["id"] for c in contexts])
        with rollout.whole_weights():
            with Span() as sampling:
                prompts, edits = rollout.sample(contexts, outer.k, seed, for_scoring=True)
            explored = self._explore(edits, rollout.task.self_edit_choices(), seed, outer.explore)
            updates = len(contexts) * (outer.k + score.extra_updates) * rollout.inner.repeats
            with inner_progress(trainer, updates) as on_done, Span() as scoring:
                baseline, outcomes = rollout.score_updates(contexts, edits, seed, on_done, score.against)
        metric = rollout.task.metric
        kept, records = [], []
        for context, prompt, before, texts, row, flags in zip(contexts, prompts, baseline, edits, outcomes, explored):
            row_rewards = [score(before, o, metric) for o in row]
            failed = [o.error is not None for o in row]
            chosen, notes = examples(
                pl_module.outer,
                prompt,
                texts,
                row_rewards,
                failed,
                select(row_rewards, outer.keep, outer.threshold, failed),
            )
            kept += chosen
            for sample, (text, outcome, r, note, x) in enumerate(zip(texts, row, row_rewards, notes, flags)):
                records.append(
                    {
                        "context_id": context["id"],
                        "epoch": trainer.current_epoch,
                        "global_step": trainer.global_step,
                        "sample": sample,
                        "rank": trainer.global_rank,
                        "text": text,
                        "baseline": before.scores[metric],
                        "post": outcome.scores[metric],
                        "reward": r,
                        **note,
                        "inner_loss": _loss(outcome),
                        "seconds": _seconds(outcome),
                        **({"explored": True} if x else {}),
                        **({"error": outcome.error} if outcome.error else {}),
                    }
                )
        records, batch["examples"] = gather(records), gather(kept)  # every rank: the whole batch, in rank order
        if self.ledger is not None:
            self.ledger.append(records)
        failed = [r for r in records if "error" in r]
        for r in failed:
            rank_zero_warn(f"self-edit {r['sample']} of context {r['context_id']} scored 0: {r['error']}")
        rewards = [r["reward"] for r in records]
        losses = [r["inner_loss"] for r in records if r["inner_loss"] is not None]
        pl_module.log_dict(
            {
                "train/reward_mean": sum(rewards) / len(rewards),
                "train/reward_max": max(rewards),
                "train/kept_fraction": len(batch["examples"]) / len(rewards),
                "train/failed": float(len(failed)),
                "train/inner_loss": sum(losses) / len(losses) if losses else math.nan,
                "train/estep_seconds": time.perf_counter() - start,
                **sampling.stats("train/sample_"),
                **scoring.stats("train/score_"),
            },
            batch_size=len(records) // outer.k,
            prog_bar=False,
        )
        if len(failed) > outer.max_failed_fraction * len(records):
            reasons = Counter(r["error"] for r in failed).most_common(3)
            raise RuntimeError(
                f"{len(failed)} of {len(records)} self-edits in batch {batch_idx} of epoch {trainer.current_epoch} "
                f"failed (model.outer.max_failed_fraction={outer.max_failed_fraction}); most common: {reasons}"
            )
        self._mstep = Span().start()  # the M-step (training_step) runs next

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict, batch_idx: int
    ) -> None:
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

    def _explore(
        self, edits: list[list[str]], choices: list[str] | None, seed: int, explore: float
    ) -> list[list[bool]]:
        """Replace each self-edit in place, with probability ``explore``, by a uniformly drawn choice."""
        rng = random.Random(derive_seed(seed, "explore"))
        flags = [[rng.random() < explore for _ in row] for row in edits]
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
