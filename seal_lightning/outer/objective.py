"""The outer loop's algorithm: what the M-step learns from one context's K scored self-edits.

* ``rest_em`` (the paper's): supervised finetuning on the kept self-edits (best-of-K above a
  threshold, or all above it: ``self_edit.keep``).
* ``advantage``: every self-edit weighted by its group-relative advantage (GRPO's or RLOO's, as
  TRL defines them), so the policy also learns what to avoid; an optional KL penalty to the
  starting policy.
* ``dpo``: each context's best vs worst self-edit as a preference pair, the starting policy as
  reference.

The starting policy is the reference: for a LoRA policy the base model with the adapter disabled
(LoRA's B starts at zero, so the two are equal at step 0); for a fully finetuned one a frozen
copy loaded from ``model.model``. Either is rebuilt from the model spec, so resuming restores it
and every DDP rank holds the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .rewards import group_advantages, preference_pair

Example = tuple  # rest_em: (prompt, text); advantage: (prompt, text, advantage[, old token logps]); dpo: (prompt, chosen, rejected)


@dataclass
class OuterConfig:
    """The M-step's algorithm (``model.outer``).

    Args:
        algorithm: ``rest_em``, ``advantage`` or ``dpo`` (see the module).
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
            steps (``sft_epochs`` > 1, or several steps a batch) stay near the sampling policy;
            null: the plain ``-A log p`` of every step.
        dpo_beta: DPO's beta (inverse temperature of the implicit reward).
    """

    algorithm: Literal["rest_em", "advantage", "dpo"] = "rest_em"
    baseline: Literal["mean", "leave_one_out"] = "mean"
    scale_rewards: bool = True
    advantage_clip: float | None = None
    normalize: Literal["sequence", "token"] = "sequence"
    kl_beta: float = 0.0
    clip_epsilon: float | None = 0.2
    dpo_beta: float = 0.1

    def __post_init__(self) -> None:
        if self.algorithm not in ("rest_em", "advantage", "dpo"):
            raise ValueError(f"model.outer.algorithm: {self.algorithm!r} is not one of rest_em, advantage, dpo")
        if self.baseline not in ("mean", "leave_one_out"):
            raise ValueError(f"model.outer.baseline: {self.baseline!r} is not one of mean, leave_one_out")
        if self.normalize not in ("sequence", "token"):
            raise ValueError(f"model.outer.normalize: {self.normalize!r} is not one of sequence, token")
        if self.advantage_clip is not None and self.advantage_clip <= 0:
            raise ValueError(f"model.outer.advantage_clip must be positive or null, got {self.advantage_clip}")
        if self.clip_epsilon is not None and not 0 < self.clip_epsilon < 1:
            raise ValueError(f"model.outer.clip_epsilon must be in (0, 1) or null, got {self.clip_epsilon}")
        if self.kl_beta < 0 or self.dpo_beta <= 0:
            raise ValueError(f"model.outer: kl_beta must be >= 0 and dpo_beta > 0, got {self.kl_beta}, {self.dpo_beta}")

    @property
    def loss_name(self) -> str:
        """The M-step loss's name in the logs (``train/<name>``)."""
        return {"rest_em": "sft_loss", "advantage": "pg_loss", "dpo": "dpo_loss"}[self.algorithm]

    @property
    def needs_reference(self) -> bool:
        return self.algorithm == "dpo" or (self.algorithm == "advantage" and self.kl_beta > 0)


def examples(config: OuterConfig, prompt: str, texts: list[str], rewards: list[float], failed: list[bool],
             kept: list[bool]) -> tuple[list[Example], list[dict]]:
    """The M-step's examples from one context's K scored self-edits (``kept``: ReST-EM's selection),
    and the fields each self-edit's ledger record gets (``kept``: it is in an example)."""
    if config.algorithm == "rest_em":
        return [(prompt, t) for t, k in zip(texts, kept) if k], [{"kept": k} for k in kept]
    if config.algorithm == "advantage":
        adv = group_advantages(rewards, failed, config.baseline, config.scale_rewards, config.advantage_clip)
        return [(prompt, t, a) for t, a in zip(texts, adv) if a != 0], [{"kept": a != 0, "advantage": a} for a in adv]
    pair = preference_pair(rewards, failed)
    notes = [{"kept": pair is not None and i in pair} for i in range(len(texts))]
    if pair is None:
        return [], notes
    notes[pair[0]]["preference"], notes[pair[1]]["preference"] = "chosen", "rejected"
    return [(prompt, texts[pair[0]], texts[pair[1]])], notes
