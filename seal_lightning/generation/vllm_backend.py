"""The ``vllm`` generation backend (GPU, ``pip install "seal_lightning[vllm]"``): an in-process
``vllm.LLM`` over the base model with ``enable_lora=True``.

vLLM never sees the torch module: every set of weights it generates from is the base plus one LoRA
adapter written to a RAM-backed directory by an :class:`AdapterStore` — the policy's adapter
(republished under a new name and id whenever the policy's weights change), or the policy's adapter
composed with an inner adapter (:func:`seal_lightning.lm.lora_io.compose`). Names and ids are never
reused, so vLLM cannot answer from an adapter, or a prefix cache, of older weights.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..lm.lora_io import Factors, compose, peft_factors, save_peft
from ..lm.models import TINY, resolve
from .base import GenerationBackend


@dataclass(frozen=True)
class VLLMConfig:
    """``vllm.LLM`` settings (``model.generation: vllm``)."""

    gpu_memory_utilization: float = 0.5  # the rest stays for the torch model and the inner loops
    max_lora_rank: int = 64  # >= policy LoRA r + inner r (the composed adapters stack both)
    max_loras: int = 16  # adapters resident in one batch
    max_model_len: int | None = None
    enforce_eager: bool = False


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


def import_vllm():
    """The ``vllm`` module, or an error that says how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "model.generation: 'vllm' needs vLLM, which is not installed here "
            f"({err}). Install it with: pip install \"seal_lightning[vllm]\" (needs a CUDA GPU); "
            "or use model.generation: hf"
        ) from None
    return vllm


class VLLMGenerator:
    """An in-process ``vllm.LLM`` over a base model directory; each prompt names its LoRA adapter."""

    def __init__(self, model_dir: str, dtype: str, config: VLLMConfig, seed: int = 0) -> None:
        vllm = import_vllm()
        self.llm = vllm.LLM(
            model=model_dir, dtype=dtype, enable_lora=True, max_lora_rank=config.max_lora_rank,
            max_loras=config.max_loras, gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len, enforce_eager=config.enforce_eager, seed=seed,
        )

    def generate(
        self, prompts: list[str], adapters: list[Adapter | None], *, max_new_tokens: int, n: int = 1,
        do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, stop: str | None = None,
    ) -> list[str]:
        """``n`` completions per prompt, prompt-major, each cut at ``stop`` (as ``generation.generate``)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = SamplingParams(
            n=n, max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
            top_p=top_p if do_sample else 1.0, seed=seed, stop=[stop] if stop else None,
        )
        requests = [LoRARequest(a.name, a.id, str(a.path)) if a else None for a in adapters]
        outputs = self.llm.generate(prompts, params, lora_request=requests, use_tqdm=False)
        return [c.text.split(stop, 1)[0].strip() if stop else c.text.strip() for out in outputs for c in out.outputs]


class VLLMBackend(GenerationBackend):
    """Self-edit sampling and answers of a LoRA policy through vLLM (``model.generation: vllm``).

    ``version`` arguments are the policy's weights version (``Rollout.weights_version``, bumped
    by every M-step optimiser step and checkpoint load): the policy's adapter is republished, under a
    new name and id, exactly when it changes.
    """

    serves_adapters = True

    def __init__(self, spec: str, dtype: str, config: VLLMConfig, policy_r: int | None, policy_targets,
                 inner_r: int, inner_targets) -> None:
        if policy_r is None:
            raise ValueError("model.generation: 'vllm' serves the policy as a LoRA adapter; set model.lora")
        if policy_r + inner_r > config.max_lora_rank:
            raise ValueError(f"model.vllm.max_lora_rank={config.max_lora_rank} is below model.lora.r + model.inner.r "
                             f"= {policy_r + inner_r} (inner answers use both adapters composed into one)")
        if policy_targets != inner_targets:
            raise ValueError("model.generation: 'vllm' needs model.lora.target_modules == model.inner.target_modules "
                             f"(got {policy_targets!r} and {inner_targets!r})")
        import_vllm()
        self.spec, self.dtype, self.config = spec, dtype, config
        self.store = AdapterStore()
        self.policy = PublishedPolicy(self.store)
        self._generator: VLLMGenerator | None = None

    def generator(self) -> VLLMGenerator:
        if self._generator is None:
            if self.spec == TINY:
                raise ValueError(f"model.generation: 'vllm' needs a model directory or hub name, not {TINY!r}")
            self._generator = VLLMGenerator(resolve(self.spec), self.dtype, self.config)
        return self._generator

    def policy_adapter(self, model, version: int) -> Adapter:
        return self.policy.current(peft_factors(model), version)

    def sample(self, policy, tokenizer, version, prompts, k, base, *, max_new_tokens, temperature, top_p, seed,
               batch_size, choices=None):
        if choices:
            raise NotImplementedError("self-edits restricted to a task's choices (e.g. ArcTask(constrained=true)) "
                                      "are sampled with model.generation: hf")
        adapter = None if base else self.policy_adapter(policy, version)
        return self.generator().generate(prompts, [adapter] * len(prompts), n=k, do_sample=True,
                                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def answer(self, policy, frozen, tokenizer, version, questions, *, max_new_tokens, stop, batch_size):
        adapter = self.policy_adapter(policy, version)
        return self.generator().generate(questions, [adapter] * len(questions), max_new_tokens=max_new_tokens,
                                         stop=stop)

    def answer_adapters(self, policy, jobs, factors, *, max_new_tokens, stop):
        on_policy = peft_factors(policy)
        adapters = [self.store.put(compose(on_policy, f), "inner") for f in factors]
        try:
            flat = self.generator().generate([q for job in jobs for q in job.questions],
                                             [a for a, job in zip(adapters, jobs) for _ in job.questions],
                                             max_new_tokens=max_new_tokens, stop=stop)
        finally:
            for adapter in adapters:
                self.store.drop(adapter)
        answers, start = [], 0
        for job in jobs:
            answers.append(flat[start : start + len(job.questions)])
            start += len(job.questions)
        return answers
