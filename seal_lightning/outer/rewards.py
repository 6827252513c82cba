"""Rewards of scored self-edits, and ReST-EM's selection of the ones to learn from."""

from __future__ import annotations

import math
from typing import Literal

from ..rollout import Outcome

Reward = Literal["gain", "post"]


def reward(before: Outcome, after: Outcome, metric: str, kind: Reward) -> float:
    """``gain``: the post-update score minus the pre-update one; ``post``: the post-update score.
    A failed self-edit earns 0."""
    if after.error is not None:
        return 0.0
    post = after.scores[metric]
    return post - before.scores[metric] if kind == "gain" else post


def select(rewards: list[float], keep: str, threshold: float, failed: list[bool] | None = None) -> list[bool]:
    """Which of one context's K self-edits to keep: the first best above ``threshold``, or all above it.

    A failed self-edit (its reward is a placeholder 0) is never kept."""
    score = [-math.inf if failed and failed[i] else r for i, r in enumerate(rewards)]
    if keep == "all":
        return [r > threshold for r in score]
    best = max(range(len(score)), key=lambda i: (score[i], -i))
    return [i == best and score[i] > threshold for i in range(len(score))]
