"""LoRA adapters as peft directories for a server that loads them by path (vLLM): a store of
adapters with names and ids never reused, and the policy's adapter republished when it changes."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..lm.lora_io import Factors, save_peft


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter directory in peft format, with a name and id unique to its weights."""

    name: str
    id: int
    path: Path


class AdapterStore:
    """Adapters on a RAM-backed disk (``/dev/shm`` when there is one) for a server that loads by path."""

    def __init__(self, root: str | Path | None = None) -> None:
        parent = root or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
        self.root = Path(tempfile.mkdtemp(prefix="seal-adapters-", dir=parent))
        self._ids = itertools.count(1)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)  # also at interpreter exit

    def put(self, factors: Factors, prefix: str) -> Adapter:
        """Write ``factors`` under a fresh name and id (never reused, even after ``drop``)."""
        i = next(self._ids)
        name = f"{prefix}-{i}"
        return Adapter(name, i, save_peft(factors, self.root / name))

    def drop(self, adapter: Adapter) -> None:
        shutil.rmtree(adapter.path, ignore_errors=True)

    def close(self) -> None:
        self._cleanup()


class PublishedPolicy:
    """The policy's LoRA as an adapter in a store, republished when its weights version changes."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store
        self.adapter: Adapter | None = None
        self.version: int | None = None

    def current(self, factors: Factors, version: int) -> Adapter:
        """The adapter of weights ``version`` (``factors`` are written only when the version is new)."""
        if self.adapter is None or version != self.version:
            old, self.adapter, self.version = self.adapter, self.store.put(factors, "policy"), version
            if old is not None:
                self.store.drop(old)
        return self.adapter
