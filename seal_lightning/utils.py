"""Helpers every layer may use: stable seeds, gathering Python objects from every process, and the
wall time and peak memory of a span of work."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
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


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux's ``/proc/self/statm``); None where there is none."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Span:
    """Wall seconds and peak resident memory of a span of work: ``with Span() as span: ...`` (or
    ``start()`` ... ``stop()`` across hooks), then ``span.stats(prefix)``. Memory is sampled every
    ``interval`` seconds by a daemon thread (and at both ends): the kernel's own high-water mark
    cannot be reset per span without losing the whole process's, which ``/usr/bin/time -v`` reports;
    a spike shorter than ``interval`` may be missed."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.seconds, self.peak = interval, 0.0, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Span:
        self._start, self.peak = time.perf_counter(), rss_bytes()
        if self.peak is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="seal-rss")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sample()
        self.seconds = time.perf_counter() - self._start

    def __enter__(self) -> Span:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sample(self) -> None:
        self.peak = max(self.peak, rss_bytes() or 0)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stats(self, prefix: str) -> dict[str, float]:
        """``{prefix}seconds`` and, where memory can be read, ``{prefix}peak_rss_gb``."""
        out = {f"{prefix}seconds": self.seconds}
        if self.peak is not None:
            out[f"{prefix}peak_rss_gb"] = self.peak / 1e9
        return out
