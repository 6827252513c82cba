"""Gathering Python objects (ledger records, evaluation rows, kept pairs) from every process."""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as torch_dist

T = TypeVar("T")


def gather(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order, on every rank (``items`` when not distributed)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return list(items)
    parts: list[list[T] | None] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
