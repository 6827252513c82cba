"""Inner engines by name (``inner.engine``)."""

from __future__ import annotations

from .batched import BatchedLoRA
from .inner import InnerConfig, InnerEngine, SequentialLoRA

ENGINES: dict[str, type[InnerEngine]] = {"sequential": SequentialLoRA, "batched": BatchedLoRA}


def make_engine(config: InnerConfig) -> InnerEngine:
    if config.engine not in ENGINES:
        raise ValueError(f"inner.engine: unknown engine {config.engine!r}; choose from {sorted(ENGINES)}")
    return ENGINES[config.engine](config)
