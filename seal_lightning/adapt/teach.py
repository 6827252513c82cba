"""``seal adapt``'s updates: the policy writes each passage's self-edit and an inner LoRA is trained on it
exactly as in training (the task's inner job, the run's inner settings, the batched engine).

``Teacher`` holds the policy's rollout and one frozen copy of the policy (``base``): every update
starts from ``base`` or, in a stream, from ``base`` with earlier updates merged into it. A document
split into several passages gets one self-edit and one inner update per passage; its adapter is the
exact sum of theirs (``lm.lora_io.compose``). Questions only measure: they never select a self-edit.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from ..inner import InnerJob
from ..lm.lora_io import Factors, compose, merge_into
from ..lm.models import context_overflow
from ..rollout import Rollout
from ..tasks import SelfEditError, grade_each
from ..utils import derive_seed
from .documents import passages


@dataclass
class Update:
    """One document's update: its passages' self-edits, the adapter (None when every passage failed;
    a failed passage leaves the others' update) and the reasons of the passages that failed."""

    doc_id: str
    self_edits: list[str]
    adapter: Factors | None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    answers: list[str] | None = None  # to the document's questions, when the engine answered them


class Teacher:
    """Self-edits and inner updates of documents on one frozen copy of the policy."""

    def __init__(self, rollout: Rollout, seed: int = 0) -> None:
        self.rollout, self.seed = rollout, seed
        self.task, self.tokenizer = rollout.task, rollout.tokenizer
        self.base = rollout.frozen_copy()

    def passages(self, doc: dict) -> list[dict]:
        """The document's passages, each one whose self-edit prompt fits the policy's context."""
        return passages(doc, lambda text: self._fits({"title": doc["title"], "context": text}))

    def _fits(self, context: dict) -> bool:
        prompt = self.rollout.format_prompt(self.task.self_edit_prompt(context))
        return context_overflow(self.base, self.tokenizer, prompt, self.rollout.sampling.max_new_tokens) is None

    def self_edits(self, contexts: list[dict]) -> list[str]:
        """One self-edit per context from the current policy, seeded by the contexts' ids."""
        with self.rollout.whole_weights():
            _, rows = self.rollout.sample(contexts, 1, derive_seed(self.seed, "adapt", [c["id"] for c in contexts]))
        return [row[0] for row in rows]

    def job(self, context: dict, edit: str, questions: list[str], extra: list[tuple[str, str]] = ()) -> InnerJob:
        """The inner job of ``edit`` (plus ``extra`` training sequences: replay), answering ``questions``
        and keeping its adapter; raises ``SelfEditError`` for an unusable self-edit."""
        job = self.task.inner_job(context, edit, derive_seed(self.seed, context["id"], edit))
        job.sequences, job.questions, job.keep_adapter = [*job.sequences, *extra], questions, True
        return job

    def train(
        self, docs: list[dict], parts: list[list[dict]], edits: list[list[str]], on=None, extra=None, answer=True
    ) -> list[Update]:
        """The updates of ``docs`` (split into ``parts``, the passages, with their ``edits``), trained
        together on a copy of ``on`` (default: ``base``); ``extra[d]``: more sequences for document d.
        With ``answer``, a one-passage document's update answers its questions in the engine
        (``Update.answers``)."""
        jobs, owners, updates = [], [], [Update(doc["id"], texts, None) for doc, texts in zip(docs, edits)]
        for d, (doc, pieces, texts) in enumerate(zip(docs, parts, edits)):
            questions = self.rollout.question_prompts(doc) if answer and len(pieces) == 1 else []
            for context, edit in zip(pieces, texts):
                try:
                    jobs.append(self.job(context, edit, questions, extra[d] if extra else ()))
                    owners.append(d)
                except SelfEditError as err:
                    updates[d].errors.append(f"{context['id']}: {err}")
        start = time.perf_counter()
        results = self.rollout.run_inner(jobs, base=copy.deepcopy(self.base if on is None else on)) if jobs else []
        seconds = (time.perf_counter() - start) / max(1, len(docs))
        found: dict[int, list[Factors]] = {}
        for d, job, result in zip(owners, jobs, results):
            if result.error is None:
                found.setdefault(d, []).append(result.extra["adapter"])
                updates[d].answers = result.answers if job.questions else None
            else:
                updates[d].errors.append(result.error)
        for d, update in enumerate(updates):
            adapters = found.get(d, [])
            update.adapter = adapters[0] if len(adapters) == 1 else compose(*adapters) if adapters else None
            update.seconds = seconds
        return updates

    def answers(self, model: torch.nn.Module, docs: list[dict]) -> list[dict[str, float]]:
        """Each document's scores on its own questions, answered by ``model`` (closed-book, greedy)."""
        asked = [d for d in docs if d["questions"]]
        prompts = [self.rollout.question_prompts(d) for d in asked]
        flat = self.rollout.answer_with(model, [q for qs in prompts for q in qs]) if asked else []
        graded = iter(grade_each(self.task, asked, prompts, flat))
        return [next(graded) if d["questions"] else {} for d in docs]

    def updated(self, adapters: list[Factors | None], on: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of ``on`` (default ``base``) with ``adapters`` merged into it in order."""
        model = copy.deepcopy(self.base if on is None else on)
        for adapter in adapters:
            if adapter is not None:
                merge_into(model, adapter)
        return model
