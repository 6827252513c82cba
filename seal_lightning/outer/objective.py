"""The outer loop's algorithm: what the M-step learns from one context's K scored self-edits.

* ``rest_em`` (the paper's): supervised finetuning on the kept self-edits (best-of-K above a
  threshold, or all above it: ``model.outer.keep``).
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

from torch import Tensor

from .config import OuterConfig
from .rewards import group_advantages, preference_pair


@dataclass(frozen=True)
class SFTExample:
    """ReST-EM's example: supervised finetuning on a kept self-edit after its prompt."""

    prompt: str
    text: str


@dataclass(frozen=True)
class AdvantageExample:
    """A self-edit weighted by its group-relative advantage; ``old_logps``: its tokens' log-probabilities
    at the M-step's start, for the clipped surrogate (``mstep.with_old_logps``)."""

    prompt: str
    text: str
    advantage: float
    old_logps: Tensor | None = None


@dataclass(frozen=True)
class PreferenceExample:
    """DPO's example: a context's best (``chosen``) and worst (``rejected``) self-edit."""

    prompt: str
    chosen: str
    rejected: str


Example = SFTExample | AdvantageExample | PreferenceExample


def examples(
    config: OuterConfig, prompt: str, texts: list[str], rewards: list[float], failed: list[bool], kept: list[bool]
) -> tuple[list[Example], list[dict]]:
    """The M-step's examples from one context's K scored self-edits (``kept``: ReST-EM's selection),
    and the fields each self-edit's ledger record gets (``kept``: it is in an example)."""
    if config.algorithm == "rest_em":
        return [SFTExample(prompt, t) for t, k in zip(texts, kept) if k], [{"kept": k} for k in kept]
    if config.algorithm == "advantage":
        adv = group_advantages(rewards, failed, config.baseline, config.scale_rewards, config.advantage_clip)
        chosen = [AdvantageExample(prompt, t, a) for t, a in zip(texts, adv) if a != 0]
        return chosen, [{"kept": a != 0, "advantage": a} for a in adv]
    pair = preference_pair(rewards, failed)
    notes = [{"kept": pair is not None and i in pair} for i in range(len(texts))]
    if pair is None:
        return [], notes
    notes[pair[0]]["preference"], notes[pair[1]]["preference"] = "chosen", "rejected"
    return [PreferenceExample(prompt, texts[pair[0]], texts[pair[1]])], notes
