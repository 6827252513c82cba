"""``OuterConfig``: every setting of the outer loop in one place (``model.outer``).

The E-step's (how many self-edits per context, how each is rewarded, which are learnt from) and
the M-step's (the algorithm and its losses, the passes over a batch's examples). The callback
that runs the E-step (``SelfEditCallback``) and ``SEALPolicy.training_step`` both read it; the
callback's own arguments are only its seed and its ledger file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .rewards import REWARDS, Reward, RewardName, get_reward

ALGORITHMS = ("rest_em", "advantage", "dpo")


@dataclass
class OuterConfig:
    """The outer loop (``model.outer``).

    E-step:
        k: self-edits sampled per context.
        reward: how a self-edit's inner update is rewarded (``outer.rewards.REWARDS``): ``gain``
            (post-update minus pre-update score), ``over_context`` (post-update score minus that of
            an update on the context alone, one more inner update per context: a self-edit earns a
            positive reward only by teaching more than the passage) or ``post``.
        keep: ReST-EM's selection: ``best_of_k`` (the best self-edit per context, if above
            ``threshold``) or ``all`` above it.
        threshold: a kept self-edit's reward must be strictly greater than this.
        explore: each training self-edit is, with this probability, replaced by one drawn uniformly
            from the task's valid self-edits (``Task.self_edit_choices``, e.g. ``ArcTask(constrained:
            true)``): epsilon-greedy exploration (ledger ``"explored": true``). Evaluation always
            samples from the policy.
        max_failed_fraction: stop the run when more than this fraction of a batch's self-edits
            failed (no usable text, non-finite inner loss, out of memory, ...); each failure
            otherwise scores 0 and its reason goes to the ledger.

    M-step:
        algorithm: ``rest_em`` (SFT on the kept self-edits), ``advantage`` (every self-edit weighted
            by its group-relative advantage) or ``dpo`` (best vs worst per context); see
            ``outer.objective``.
        sft_epochs: passes over a batch's examples per M-step.
        sft_batch_size: examples per policy optimiser step.
        sft_micro_batch_size: sequences per forward/backward (a DPO pair is two, never split): each
            process's share of a step goes through in micro-batches whose gradients add up, the same
            step in less memory; null: the whole share at once.
        sft_max_length: prompt + self-edit tokens kept for the loss.
        baseline: advantage's baseline: ``mean`` of the group (GRPO) or ``leave_one_out`` (RLOO).
        scale_rewards: divide advantages by the group's reward standard deviation (GRPO's
            ``scale_rewards="group"``); False keeps raw differences (RLOO, Dr. GRPO).
        advantage_clip: clip advantages to ``[-advantage_clip, advantage_clip]``; null: no clip.
        normalize: advantage's loss normalisation: ``sequence`` (each self-edit's token mean, then
            the mean over self-edits: every self-edit weighs the same, GRPO's original loss) or
            ``token`` (sum over all tokens / their count: longer self-edits weigh more, DAPO's).
        kl_beta: weight of the per-token KL penalty to the starting policy (TRL's k3 estimator);
            0 computes no reference pass.
        clip_epsilon: advantage's trust region (TRL's GRPO ``epsilon``): the loss is the clipped
            surrogate of the ratio to the policy at the M-step's start, so its later optimiser
            steps stay near the sampling policy; null: the plain ``-A log p`` of every step.
        dpo_beta: DPO's beta (inverse temperature of the implicit reward).
    """

    algorithm: Literal["rest_em", "advantage", "dpo"] = "rest_em"
    k: int = 5
    reward: RewardName = "gain"
    keep: Literal["best_of_k", "all"] = "best_of_k"
    threshold: float = 0.0
    explore: float = 0.0
    max_failed_fraction: float = 0.5
    sft_epochs: int = 1
    sft_batch_size: int = 4
    sft_micro_batch_size: int | None = None
    sft_max_length: int = 1024
    baseline: Literal["mean", "leave_one_out"] = "mean"
    scale_rewards: bool = True
    advantage_clip: float | None = None
    normalize: Literal["sequence", "token"] = "sequence"
    kl_beta: float = 0.0
    clip_epsilon: float | None = 0.2
    dpo_beta: float = 0.1

    def __post_init__(self) -> None:
        choices = {
            "algorithm": ALGORITHMS,
            "reward": tuple(REWARDS),
            "keep": ("best_of_k", "all"),
            "baseline": ("mean", "leave_one_out"),
            "normalize": ("sequence", "token"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.outer.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.k < 1 or (self.algorithm != "rest_em" and self.k < 2):
            need = 1 if self.algorithm == "rest_em" else 2
            raise ValueError(
                f"model.outer.k must be >= {need} for model.outer.algorithm={self.algorithm} "
                f"(advantage and dpo compare a context's self-edits), got {self.k}"
            )
        for name in ("explore", "max_failed_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.outer.{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.sft_epochs, self.sft_batch_size, self.sft_max_length) < 1:
            raise ValueError("model.outer: sft_epochs, sft_batch_size and sft_max_length must be >= 1")
        if self.sft_micro_batch_size is not None and self.sft_micro_batch_size < 1:
            raise ValueError(f"model.outer.sft_micro_batch_size must be >= 1 or null, got {self.sft_micro_batch_size}")
        if self.advantage_clip is not None and self.advantage_clip <= 0:
            raise ValueError(f"model.outer.advantage_clip must be positive or null, got {self.advantage_clip}")
        if self.clip_epsilon is not None and not 0 < self.clip_epsilon < 1:
            raise ValueError(f"model.outer.clip_epsilon must be in (0, 1) or null, got {self.clip_epsilon}")
        if self.kl_beta < 0 or self.dpo_beta <= 0:
            raise ValueError(f"model.outer: kl_beta must be >= 0 and dpo_beta > 0, got {self.kl_beta}, {self.dpo_beta}")

    @property
    def reward_fn(self) -> Reward:
        """The named reward (``outer.rewards.Reward``)."""
        return get_reward(self.reward)

    @property
    def loss_name(self) -> str:
        """The M-step loss's name in the logs (``train/<name>``)."""
        return {"rest_em": "sft_loss", "advantage": "pg_loss", "dpo": "dpo_loss"}[self.algorithm]

    @property
    def micro_examples(self) -> int | None:
        """Examples per forward/backward (``sft_micro_batch_size`` in sequences; None: the whole share)."""
        if self.sft_micro_batch_size is None:
            return None
        return max(1, self.sft_micro_batch_size // (2 if self.algorithm == "dpo" else 1))

    @property
    def needs_reference(self) -> bool:
        return self.algorithm == "dpo" or (self.algorithm == "advantage" and self.kl_beta > 0)
