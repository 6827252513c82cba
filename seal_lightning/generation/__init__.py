"""Generation backends for self-edit sampling and closed-book answers, by name (``model.generation``)."""

from __future__ import annotations

from .adapters import AdapterStore, PublishedPolicy
from .base import GenerationBackend, SamplingConfig
from .hf import Choices, HFBackend, eval_mode, generate
from .vllm_backend import VLLMBackend, VLLMConfig

BACKENDS = ("hf", "vllm")

__all__ = [
    "AdapterStore",
    "BACKENDS",
    "Choices",
    "GenerationBackend",
    "HFBackend",
    "PublishedPolicy",
    "SamplingConfig",
    "VLLMBackend",
    "VLLMConfig",
    "eval_mode",
    "generate",
    "make_backend",
]


def make_backend(name: str, spec: str, dtype: str, vllm: VLLMConfig, policy_lora, inner) -> GenerationBackend:
    """The backend ``model.generation`` names (``policy_lora``: ``PolicyLoRA`` or None; ``inner``: ``InnerConfig``)."""
    if name == "hf":
        return HFBackend()
    if name == "vllm":
        return VLLMBackend(
            spec,
            dtype,
            vllm,
            policy_lora and policy_lora.r,
            policy_lora and policy_lora.target_modules,
            inner.r,
            inner.target_modules,
        )
    raise ValueError(f"model.generation: unknown backend {name!r}; choose from {list(BACKENDS)}")
