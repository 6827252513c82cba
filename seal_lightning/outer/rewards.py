"""Rewards of scored self-edits, and ReST-EM's selection of the ones to learn from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..rollout import Outcome

RewardName = Literal["gain", "over_context", "post"]


@dataclass(frozen=True)
class Reward:
    """A named reward of a self-edit's inner update.

    ``against`` is what ``Rollout.score_updates`` scores first for each context, the outcome the
    reward compares with: ``before`` (the model before any update) or ``context`` (after one more
    inner update, on the context alone: ``extra_updates`` per context). ``subtract``: the reward is
    the post-update score minus that outcome's; otherwise the post-update score itself. A failed
    self-edit (no usable text, a failed update) earns 0.
    """

    name: str
    against: Literal["before", "context"]
    subtract: bool = True

    @property
    def extra_updates(self) -> int:
        """Inner updates per context beyond its K self-edits'."""
        return 1 if self.against == "context" else 0

    def __call__(self, baseline: Outcome, after: Outcome, metric: str) -> float:
        if after.error is not None:
            return 0.0
        post = after.scores[metric]
        return post - baseline.scores[metric] if self.subtract else post


REWARDS = {
    r.name: r
    for r in (
        Reward("gain", "before"),
        Reward("over_context", "context"),
        Reward("post", "before", subtract=False),
    )
}


def get_reward(name: str) -> Reward:
    """The reward called ``name``; an unknown name is an error that lists the choices."""
    if name not in REWARDS:
        raise ValueError(f"model.outer.reward: {name!r} is not one of {', '.join(REWARDS)}")
    return REWARDS[name]


def select(rewards: list[float], keep: str, threshold: float, failed: list[bool] | None = None) -> list[bool]:
    """Which of one context's K self-edits to keep: the first best above ``threshold``, or all above it.

    A failed self-edit (its reward is a placeholder 0) is never kept."""
    score = [-math.inf if failed and failed[i] else r for i, r in enumerate(rewards)]
    if keep == "all":
        return [r > threshold for r in score]
    best = max(range(len(score)), key=lambda i: (score[i], -i))
    return [i == best and score[i] > threshold for i in range(len(score))]


def group_advantages(
    rewards: list[float], failed: list[bool], baseline: str = "mean", scale: bool = True, clip: float | None = None
) -> list[float]:
    """Each self-edit's advantage within its context's group of K, as TRL defines them: the reward
    minus the group mean (``mean``, GRPO) or minus the mean of the other K-1 (``leave_one_out``,
    RLOO), divided by the group's standard deviation (unbiased, + 1e-4) when ``scale``, then
    clipped to ``[-clip, clip]``. Failed self-edits are left out of the group and get 0; so does
    every member of a group with fewer than two scored self-edits or with all rewards equal."""
    scored = [r for r, f in zip(rewards, failed) if not f]
    n = len(scored)
    if n < 2 or max(scored) == min(scored):
        return [0.0] * len(rewards)
    mean = sum(scored) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in scored) / (n - 1))
    out = []
    for r, f in zip(rewards, failed):
        if f:
            out.append(0.0)
            continue
        a = r - mean if baseline == "mean" else r - (sum(scored) - r) / (n - 1)
        a = a / (std + 1e-4) if scale else a
        out.append(a if clip is None else max(-clip, min(clip, a)))
    return out


def preference_pair(rewards: list[float], failed: list[bool]) -> tuple[int, int] | None:
    """(chosen, rejected): the first best and the last worst scored self-edit of a context, for DPO;
    None when fewer than two are scored or all their rewards are equal."""
    scored = [i for i, f in enumerate(failed) if not f]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda i: (rewards[i], -i))
    worst = min(scored, key=lambda i: (rewards[i], -i))
    return None if rewards[best] == rewards[worst] else (best, worst)
