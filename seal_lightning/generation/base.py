"""The generation backend interface: who writes the policy's self-edits and answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn

from ..lm.lora_io import Factors


@dataclass(frozen=True)
class SamplingConfig:
    """How self-edits are sampled from the policy (``batch_size``: rows per generation batch, counting
    every prompt's k samples)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64


class GenerationBackend(ABC):
    """Writes the policy's self-edits and answers. ``policy`` is the trainable module (peft when the
    policy has LoRA), ``frozen`` its merged copy, ``version`` its weights version
    (``Rollout.weights_version``); each backend uses what it needs."""

    #: inner answers go through ``answer_adapters`` (passed to the engines' ``run``)
    serves_adapters = False
    #: ``sample`` generates on the module it is given: a merged frozen copy serves as the policy
    samples_from_module = False

    @abstractmethod
    def sample(
        self,
        policy: nn.Module,
        tokenizer,
        version: int,
        prompts: list[str],
        k: int,
        base: bool,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        batch_size: int,
        choices: list[str] | None = None,
    ) -> list[str]:
        """``k`` self-edits per prompt, prompt-major (``base``: from the model without its LoRA;
        ``choices``: each self-edit is one of these, see ``Task.self_edit_choices``)."""

    @abstractmethod
    def answer(
        self,
        policy: nn.Module,
        frozen: nn.Module,
        tokenizer,
        version: int,
        questions: list[str],
        *,
        max_new_tokens: int,
        stop: str,
        batch_size: int,
    ) -> list[str]:
        """Greedy answers of the current policy."""

    def answer_adapters(
        self, policy: nn.Module, jobs: list, factors: list[Factors], *, max_new_tokens: int, stop: str
    ) -> list[list[str]]:
        """Each job's greedy answers from the policy with that job's inner adapter on top."""
        raise NotImplementedError(f"{type(self).__name__} answers on the engines' own modules")
