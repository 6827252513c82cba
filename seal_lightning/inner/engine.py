"""The inner loop's interface: a job (train on sequences, answer questions), its result, the engine.

Plain torch, not a nested ``Trainer``. ``sequential.SequentialLoRA`` is the reference engine (one
peft adapter, re-initialised for every job); ``batched.BatchedLoRA`` (the default) trains many
adapters at once and matches it step for step. The optimiser matches the SEAL reference's HF
``Trainer`` defaults: AdamW without weight decay, linear decay to zero, no warm-up, gradient
clipping at 1.0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..generation.hf import answer_scored, generate
from ..lm.lora import LoRA
from ..lm.lora_io import Factors
from ..lm.sft import target_logprobs


@dataclass(frozen=True)
class InnerConfig(LoRA):
    """Hyperparameters of the inner LoRA update (defaults are the SEAL reference's).

    Args:
        r: LoRA rank.
        alpha: LoRA alpha.
        dropout: LoRA dropout.
        target_modules: peft ``target_modules`` (``all-linear``: every linear layer but the head).
        engine: ``batched`` (up to ``max_adapters`` adapters trained in one forward/backward) or
            ``sequential`` (one peft adapter reused job after job; the reference implementation).
        lr: peak learning rate (a job may override it).
        epochs: passes over the job's sequences (a job may override it).
        batch_size: sequences per optimiser step.
        max_grad_norm: gradient clipping.
        max_length: sequences are truncated to this many tokens.
        pack_length: the batched engine packs a step's sequences into rows of this many tokens
            (attention costs the square of a row's length; measured in docs/performance.md).
        answer_tokens: greedy tokens generated per answer.
        answer_stop: an answer ends at this string (``"\n\n"`` for multi-line ARC grids).
        eval_batch_size: rows per generation batch when answering (decoding reads every weight once
            a step whatever the rows, so wide batches pay; docs/performance.md).
        max_adapters: the most adapters the batched engine trains together (it takes fewer when
            one ``pack_length`` bin holds fewer adapters' steps, or the memory budget fewer adapters).
        repeats: each self-edit is trained and scored this many times with different inner seeds
            (LoRA initialisation, data order, augmentations) and its scores averaged, to tame the
            inner loop's noise (the SEAL reference averages 3); 1 scores once.
        memory_budget: GiB the batched engine may use beyond the model it is given (adapters,
            optimiser state, activations, answer caches); it plans adapters per group, tokens per
            forward/backward and rows per answer chunk to fit (``inner/memory.py``). ``None``:
            40% of the memory available when the run starts (the CPU's MemAvailable, a GPU's free memory).
        checkpointing: recompute each decoder layer in backward instead of keeping its activations
            (about a third more compute, a fraction of the memory per token).
        dtype: weights of the frozen copy every inner update trains on and every pre- and post-update
            answer comes from (the adapters and their optimiser state are fp32 whatever it is).
            ``auto``: ``bfloat16`` where bf16 matmuls are fast (``lm.models.fast_bf16``), else the
            policy's dtype; ``float32`` reproduces the fp32 path exactly.
    """

    r: int = 32
    alpha: int = 64
    engine: str = "batched"
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 512
    pack_length: int = 512
    answer_tokens: int = 24
    answer_stop: str = "\n"
    eval_batch_size: int = 128
    max_adapters: int = 16
    repeats: int = 1
    memory_budget: float | None = None
    checkpointing: bool = False
    dtype: str = "auto"


@dataclass
class InnerJob:
    """One inner update: train on ``sequences`` (prompt, completion), then answer ``questions``.

    ``targets``: a gold answer per question; the updated model's teacher-forced mean log-probability
    per token of each goes to ``InnerResult.logprobs`` (a dense score that needs no generation).

    ``eos``: end every completion with the EOS token, so the model learns where an answer stops.
    ``keep_adapter``: return the trained adapter in ``InnerResult.extra["adapter"]`` (``Factors`` on
    the CPU), e.g. to merge it into the model for the next update.
    """

    sequences: list[tuple[str, str]]
    questions: list[str]
    seed: int
    lr: float | None = None
    epochs: int | None = None
    eos: bool = False
    keep_adapter: bool = False
    targets: list[str] | None = None


@dataclass
class InnerResult:
    answers: list[str]
    loss: float = math.nan
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None
    logprobs: list[float] | None = None  # per question, when the job has targets
    extra: dict = field(default_factory=dict)  # "losses" (every step), "train_seconds", "adapter" (on request)


AdapterAnswers = Callable[[list["InnerJob"], list[Factors]], list[list[str]]]


class InnerEngine(ABC):
    """Runs many inner jobs on one frozen base model (a private copy the engine may modify)."""

    def __init__(self, config: InnerConfig):
        self.config = config
        self._answers: AdapterAnswers | None = None  # the running call's arguments (``run``)
        self._on_done: Callable[[int], None] | None = None

    def _done(self, n: int) -> None:
        if self._on_done is not None and n:
            self._on_done(n)

    def run(
        self,
        base: nn.Module,
        tokenizer,
        jobs: list[InnerJob],
        answers: AdapterAnswers | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> list[InnerResult]:
        """One result per job; a job without sequences is an error, the others go to ``_run``.

        ``answers``, when given (a backend that serves adapters, vLLM), answers instead of
        ``answer``: it gets the jobs and each one's trained adapter and returns each job's answers.
        ``on_done``, when given, is told how many more jobs have finished (a progress bar)."""
        self._answers, self._on_done = answers, on_done
        try:
            return self._run_all(base, tokenizer, jobs)
        finally:
            self._answers = self._on_done = None

    def _run_all(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        results: list[InnerResult | None] = [None] * len(jobs)
        todo = [i for i, job in enumerate(jobs) if job.sequences]
        for i, job in enumerate(jobs):
            if not job.sequences:
                results[i] = InnerResult(answers=[], error="self-edit has no usable text")
        self._done(len(jobs) - len(todo))
        if todo:
            for i, result in zip(todo, self._run_fitting(base, tokenizer, [jobs[i] for i in todo])):
                results[i] = result
        return results

    def _run_fitting(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        """``_run``; out of memory, the two halves one after the other, down to a single job, which
        is then an error (the other jobs still run)."""
        try:
            return self._run(base, tokenizer, jobs)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _out_of_memory(err):
                raise
            message = str(err).strip().splitlines()[0]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(jobs) == 1:
            self._done(1)
            return [InnerResult(answers=[], error=f"out of memory: {message}")]
        half = len(jobs) // 2
        return self._run_fitting(base, tokenizer, jobs[:half]) + self._run_fitting(base, tokenizer, jobs[half:])

    @abstractmethod
    def _run(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        """Train and evaluate non-empty ``jobs`` on ``base``."""

    @abstractmethod
    def release(self) -> None:
        """Drop the last run's base and its adapters, so that they do not outlive the run (the
        rollout calls it once each run's results are read; until then they can be inspected)."""

    def answer(self, model: nn.Module, tokenizer, questions: list[str]) -> list[str]:
        """Greedy, batched closed-book answers, each cut at ``config.answer_stop``."""
        return generate(
            model,
            tokenizer,
            questions,
            max_new_tokens=self.config.answer_tokens,
            batch_size=self.config.eval_batch_size,
            stop=self.config.answer_stop,
        )

    def answer_scored(
        self, model: nn.Module, tokenizer, questions: list[str], targets: list[str]
    ) -> tuple[list[str], list[float]]:
        """``answer``, and ``logprobs`` of the targets from the same forward of each question."""
        cfg = self.config
        return answer_scored(
            model,
            tokenizer,
            questions,
            targets,
            max_new_tokens=cfg.answer_tokens,
            batch_size=cfg.eval_batch_size,
            stop=cfg.answer_stop,
        )

    def logprobs(self, model: nn.Module, tokenizer, questions: list[str], targets: list[str]) -> list[float]:
        """Teacher-forced mean log-probability per token of each target answer after its question."""
        cfg = self.config
        return target_logprobs(model, tokenizer, questions, targets, cfg.max_length, pack_length=cfg.pack_length)


def _out_of_memory(err: Exception) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a ``RuntimeError`` saying so."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text
