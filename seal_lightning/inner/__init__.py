"""The inner loop: a fresh LoRA per self-edit, trained and then asked the held-out questions.
Engines by name (``inner.engine``)."""

from __future__ import annotations

from .batched import BatchedLoRA
from .engine import InnerConfig, InnerEngine, InnerJob, InnerResult
from .sequential import SequentialLoRA

ENGINES: dict[str, type[InnerEngine]] = {"sequential": SequentialLoRA, "batched": BatchedLoRA}

__all__ = [
    "ENGINES",
    "BatchedLoRA",
    "InnerConfig",
    "InnerEngine",
    "InnerJob",
    "InnerResult",
    "SequentialLoRA",
    "make_engine",
]


def make_engine(config: InnerConfig) -> InnerEngine:
    if config.engine not in ENGINES:
        raise ValueError(f"inner.engine: unknown engine {config.engine!r}; choose from {sorted(ENGINES)}")
    return ENGINES[config.engine](config)
