"""Rollout: what the E-step and evaluation share — sample self-edits, run their inner updates, answer.

A ``Rollout`` holds the task, the generation backend and the inner engine, and reads the policy's
current model (attached by ``SEALPolicy.configure_model``). It turns contexts into chat-formatted
self-edit prompts, samples K self-edits per prompt, trains one inner update per self-edit on a
frozen copy of the policy and grades the answers of the updated model, returning an ``Outcome``
per self-edit. It computes no reward: that is the outer loop's choice (``seal_lightning.outer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from .generation import GenerationBackend, SamplingConfig
from .inner import InnerConfig, InnerEngine, InnerJob, InnerResult
from .lm.fsdp import gather
from .lm.models import context_overflow, copy_dtype, frozen_copy
from .tasks import SelfEditError, Task, grade_each
from .utils import derive_seed


@dataclass
class Outcome:
    """Scores of one evaluation (before any update, or after one self-edit's inner update), or the
    error that scored it zero."""

    scores: dict[str, float]
    result: InnerResult | None = None
    error: str | None = None


class Rollout:
    """Self-edit sampling and scoring on the policy's current weights.

    ``weights_version`` counts changes of those weights (the policy bumps it after every optimiser
    step and checkpoint load), so a backend that publishes the weights (vLLM) knows when to.
    """

    def __init__(
        self,
        task: Task,
        sampling: SamplingConfig,
        inner: InnerConfig,
        engine: InnerEngine,
        generation: GenerationBackend,
        chat_template: bool = True,
    ) -> None:
        self.task, self.sampling, self.inner, self.engine, self.generation = task, sampling, inner, engine, generation
        self.use_chat_template = chat_template
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.weights_version = 0
        self.template: torch.nn.Module | None = None
        self.sharded: torch.nn.Module | None = None
        self._drawn: tuple[int, torch.nn.Module] | None = None  # (weights version, copy) ``sample`` drew from

    def attach(self, model: torch.nn.Module, tokenizer, template: torch.nn.Module | None = None) -> None:
        """Read the policy's weights from ``model`` (the trainable module) from now on; ``template``:
        the structure of a sharded ``model`` (``lm.fsdp.shard``), whose weights are whole only inside
        ``whole_weights``."""
        self.model, self.tokenizer, self.template = model, tokenizer, template

    @contextmanager
    def whole_weights(self) -> Iterator[None]:
        """Sampling and inner updates need whole weights: under FSDP every rank gathers them into a
        plain copy that stands in for the sharded model until the block ends (a collective: every
        rank enters together, before any data-dependent work). Otherwise a no-op."""
        if self.template is None or self.sharded is not None:
            yield
            return
        self.sharded, self.model = self.model, gather(self.model, self.template)
        try:
            yield
        finally:
            self.model, self.sharded = self.sharded, None

    def _check_whole(self) -> None:
        if self.template is not None and self.sharded is None:
            raise RuntimeError("the policy is sharded (FSDP): sample and score inside Rollout.whole_weights()")

    # --- prompts ---------------------------------------------------------------------------------
    def format_prompt(self, text: str) -> str:
        if self.use_chat_template and self.tokenizer.chat_template:
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text

    def question_prompts(self, context: dict) -> list[str]:
        """The context's held-out questions as the model sees them (chat-formatted when the task says so)."""
        task = self.task
        return [self.format_prompt(q) if task.chat_questions else q for q in task.questions(context)]

    # --- sampling --------------------------------------------------------------------------------
    def sample(
        self,
        contexts: list[dict],
        k: int,
        seed: int,
        base: bool = False,
        task: Task | None = None,
        for_scoring: bool = False,
    ) -> tuple[list[str], list[list[str]]]:
        """Each context's self-edit prompt and ``k`` self-edits sampled from it; ``base=True`` samples
        from the model before RL; ``task`` overrides the self-edit prompt (a prompt variant);
        ``for_scoring``: draw them from the frozen copy the next ``frozen_copy`` returns (one copy, not two).

        A prompt that leaves no room for ``sampling.max_new_tokens`` in the model's context is not
        sampled (its self-edits are empty; ``score_updates`` scores that context 0 with the reason)."""
        self._check_whole()
        task = task or self.task
        prompts = [self.format_prompt(task.self_edit_prompt(c)) for c in contexts]
        s = self.sampling
        fits = [context_overflow(self.model, self.tokenizer, p, s.max_new_tokens) is None for p in prompts]
        kept = [p for p, f in zip(prompts, fits) if f]
        policy = self.model
        shares = for_scoring and not base and self.generation.samples_from_module
        if shares and copy_dtype(policy, self.inner.dtype) == next(policy.parameters()).dtype:
            with torch.inference_mode(False):  # evaluation runs in inference mode; the copy trains
                self._drawn = self.weights_version, (policy := self.frozen_copy())
        how = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, batch_size=s.batch_size)
        how.update(seed=seed, choices=task.self_edit_choices())
        texts = (
            self.generation.sample(policy, self.tokenizer, self.weights_version, kept, k, base, **how) if kept else []
        )
        rows = iter(texts[i : i + k] for i in range(0, len(texts), k))
        return prompts, [next(rows) if f else [""] * k for f in fits]

    # --- inner updates and answers ---------------------------------------------------------------
    def frozen_copy(self) -> torch.nn.Module:
        """A frozen copy of the policy (LoRA merged) for inner loops to modify, in ``inner.dtype``: the
        one ``sample(for_scoring=True)`` drew from at these weights, if it is not taken yet."""
        self._check_whole()
        drawn, self._drawn = self._drawn, None
        return drawn[1] if drawn and drawn[0] == self.weights_version else frozen_copy(self.model, self.inner.dtype)

    def run_inner(self, jobs: list[InnerJob], base: torch.nn.Module | None = None) -> list[InnerResult]:
        """Inner updates of ``jobs`` on ``base`` (default: a frozen copy of the current policy), which the
        engine may modify; gradients on, even in evaluation."""
        with torch.inference_mode(False), torch.enable_grad():
            return self._run_engine(self.frozen_copy() if base is None else base, jobs)

    def _run_engine(self, base: torch.nn.Module, jobs: list[InnerJob], on_done=None) -> list[InnerResult]:
        """The engine's results on ``base``; then it lets go of ``base`` and its adapters (not kept into the M-step)."""
        try:
            return self.engine.run(base, self.tokenizer, jobs, answers=self._adapter_answers(), on_done=on_done)
        finally:
            self.engine.release()

    def answer_with(self, frozen: torch.nn.Module, questions: list[str]) -> list[str]:
        """Greedy answers of ``frozen``: the current policy's merged copy, or one modified from it."""
        cfg = self.inner
        return self.generation.answer(
            self.model,
            frozen,
            self.tokenizer,
            self.weights_version,
            questions,
            max_new_tokens=cfg.answer_tokens,
            stop=cfg.answer_stop,
            batch_size=cfg.eval_batch_size,
        )

    def score_updates(
        self,
        contexts: list[dict],
        edits: list[list[str | None]],
        seed: int,
        on_done: Callable[[int], None] | None = None,
        against: Literal["before", "context"] = "before",
    ) -> tuple[list[Outcome], list[list[Outcome]]]:
        """The pre-update ``Outcome`` per context, and one per edit (``None`` = the context alone).

        ``against="context"``: instead of the pre-update outcome, each context's first is that of one
        more inner update, on the context alone; a context whose own update failed fails its edits.
        A context whose questions do not fit the model scores 0 everywhere, with the reason as error.
        Inner loops train even inside Lightning's validation/test loops, which run in inference mode.
        ``on_done`` is told how many more inner updates have finished (a progress bar).
        """
        with torch.inference_mode(False), torch.enable_grad():
            if against == "before":
                baseline, outcomes = self._score_updates(contexts, edits, seed, on_done)
            else:  # the pre-update pass is not needed: the first update of each row is the baseline
                rows = [[None, *row] for row in edits]
                _, rows = self._score_updates(contexts, rows, seed, on_done, before=False)
                baseline, outcomes = [row[0] for row in rows], [row[1:] for row in rows]
        for first, row in zip(baseline, outcomes):
            for outcome in row if first.error is not None and against == "context" else []:
                outcome.error = outcome.error or f"the update on the context alone failed: {first.error}"
        for context, first, row in zip(contexts, baseline, outcomes):
            for outcome in row if self.task.targets(context) else []:
                if outcome.error is not None:  # no update took place: the log-prob stays the row's first
                    outcome.scores["logprob"] = first.scores.setdefault("logprob", 0.0)
        return baseline, outcomes

    def _score_updates(
        self,
        contexts: list[dict],
        edits: list[list[str | None]],
        seed: int,
        on_done: Callable[[int], None] | None,
        before: bool = True,
    ) -> tuple[list[Outcome], list[list[Outcome]]]:
        """The pre-update outcomes (scored only when ``before``) and the outcomes of the edits' updates."""
        base = self.frozen_copy()
        task = self.task
        questions = [self.question_prompts(c) for c in contexts]
        targets = [task.targets(c) for c in contexts]
        baseline = [Outcome(task.zero(), error=self._too_long(c, qs)) for c, qs in zip(contexts, questions)]
        jobs, slots = [], []
        outcomes = [[Outcome(task.zero(), error=before.error) for _ in row] for before, row in zip(baseline, edits)]
        for ci, (context, row) in enumerate(zip(contexts, edits)):
            for si, edit in enumerate(row):
                if baseline[ci].error:
                    continue
                # seeded by the text, so equal self-edits get equal adapters across conditions;
                # repeat 0 keeps the seed of a single run
                seeds = [derive_seed(seed, ci, edit, *([r] if r else [])) for r in range(self.inner.repeats)]
                try:
                    copies = [task.inner_job(context, edit, s) for s in seeds]
                except SelfEditError as err:
                    outcomes[ci][si].error = str(err)
                    continue
                for job in copies:
                    job.questions, job.targets = questions[ci], targets[ci]
                jobs += copies
                slots += [(ci, si)] * len(copies)
        fits = [ci for ci, outcome in enumerate(baseline) if outcome.error is None] if before else []
        if fits:
            flat = self.answer_with(base, [q for ci in fits for q in questions[ci]])
            graded = grade_each(task, [contexts[ci] for ci in fits], [questions[ci] for ci in fits], flat)
            for ci, scores in zip(fits, graded):
                baseline[ci].scores = scores
            self._baseline_logprobs(base, [ci for ci in fits if targets[ci]], questions, targets, baseline)
        done: dict[tuple[int, int], list[InnerResult]] = {}
        for slot, result in zip(slots, self._run_engine(base, jobs, on_done)):
            done.setdefault(slot, []).append(result)
        for (ci, si), results in done.items():
            outcomes[ci][si] = self._outcome(contexts[ci], results)
        return baseline, outcomes

    def _baseline_logprobs(
        self,
        base: torch.nn.Module,
        fits: list[int],
        questions: list[list[str]],
        targets: list[list[str] | None],
        baseline: list[Outcome],
    ) -> None:
        """The pre-update ``logprob`` score of the contexts ``fits`` (their mean over questions)."""
        if not fits:
            return
        flat = self.engine.logprobs(
            base, self.tokenizer, [q for ci in fits for q in questions[ci]], [t for ci in fits for t in targets[ci]]
        )
        start = 0
        for ci in fits:
            n = len(questions[ci])
            baseline[ci].scores["logprob"] = sum(flat[start : start + n]) / n
            start += n

    def _outcome(self, context: dict, results: list[InnerResult]) -> Outcome:
        """One self-edit's outcome from its repeats: the mean scores, or the first repeat's error; the
        result of the first repeat, with the seconds of all."""
        failed = next((r for r in results if r.error is not None), None)
        result = dataclasses.replace(failed or results[0], seconds=sum(r.seconds for r in results))
        if failed is not None:
            return Outcome(self.task.zero(), result, failed.error)
        graded = [self.task.grade(context, r.answers) for r in results]
        for scores, r in zip(graded, results):
            if r.logprobs is not None:
                scores["logprob"] = sum(r.logprobs) / len(r.logprobs)
        return Outcome({k: sum(g[k] for g in graded) / len(graded) for k in graded[0]}, result)

    def _adapter_answers(self) -> Callable[[list[InnerJob], list], list[list[str]]] | None:
        """The engines' ``answers`` argument: through a backend that serves adapters (vLLM), else None."""
        return self._answer_adapters if self.generation.serves_adapters else None

    def _answer_adapters(self, jobs: list[InnerJob], factors: list) -> list[list[str]]:
        """Inner answers through a backend that serves adapters (vLLM)."""
        cfg = self.inner
        return self.generation.answer_adapters(
            self.model, jobs, factors, max_new_tokens=cfg.answer_tokens, stop=cfg.answer_stop
        )

    # --- length checks ---------------------------------------------------------------------------
    def _too_long(self, context: dict, questions: list[str]) -> str | None:
        """Why a context cannot be used (its self-edit prompt or a question does not fit the model), or None.

        Such a context is rejected (scored 0 with this reason), never silently truncated."""
        prompt = self.format_prompt(self.task.self_edit_prompt(context))
        checks = [("self-edit prompt", prompt, self.sampling.max_new_tokens)]
        checks += [("question", q, self.inner.answer_tokens) for q in questions]
        overflows = ((what, context_overflow(self.model, self.tokenizer, text, n)) for what, text, n in checks)
        return next((f"{what} {reason}" for what, reason in overflows if reason), None)
