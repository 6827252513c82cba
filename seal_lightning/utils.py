"""Helpers every layer may use: stable seeds, and gathering Python objects from every process."""

from __future__ import annotations

import hashlib
from typing import TypeVar

import torch.distributed as torch_dist

T = TypeVar("T")


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (independent of Python's hash randomisation)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def gather(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order, on every rank (``items`` when not distributed)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return list(items)
    parts: list[list[T] | None] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
