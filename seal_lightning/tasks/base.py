"""The task interface: what SEAL needs to know about one kind of context.

A task turns a context into the prompt that asks for a self-edit, turns a self-edit into an
inner-loop job (training sequences, optional hyperparameters, held-out questions), and grades
the answers. Prompts are returned as plain instructions; the policy applies the chat template.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..inner.engine import InnerJob


class SelfEditError(ValueError):
    """A self-edit that cannot be used (no text, bad format): scored 0, the reason is logged."""


class Task(ABC):
    """Plug-in interface shared by knowledge incorporation and few-shot ARC."""

    #: key of :meth:`grade`'s result that is the reward
    metric: str = "score"
    #: wrap the questions in the chat template (off for prompts the model continues verbatim)
    chat_questions: bool = True
    #: names shown for the evaluation conditions (``no_update``, ``passage``, ``base_self_edit``,
    #: ``self_edit``, ``oracle``) in the results table
    condition_labels: dict[str, str] = {}

    @abstractmethod
    def self_edit_prompt(self, context: dict) -> str:
        """Instruction that asks the policy for a self-edit of ``context``."""

    @abstractmethod
    def questions(self, context: dict) -> list[str]:
        """Held-out prompts answered after the inner update."""

    @abstractmethod
    def inner_job(self, context: dict, self_edit: str | None, seed: int) -> InnerJob:
        """Inner job for ``self_edit`` (``None``: learn from the context alone); may raise SelfEditError."""

    @abstractmethod
    def grade(self, context: dict, answers: list[str]) -> dict[str, float]:
        """Scores in [0, 1] of ``answers`` to the job's questions; contains :attr:`metric`."""

    def targets(self, context: dict) -> list[str] | None:
        """A gold answer per question, for the teacher-forced ``logprob`` score; None: the task has none."""
        return None

    def self_edit_choices(self) -> list[str] | None:
        """A finite set of valid self-edits that sampling is restricted to, or None for free text."""
        return None

    def with_prompt(self, prompt: str) -> Task:
        """This task with another self-edit prompt (a name or template), for prompt comparisons."""
        raise ValueError(f"{type(self).__name__} has no self-edit prompt variants (model.eval.prompts)")

    def zero(self) -> dict[str, float]:
        """The scores of a failed self-edit."""
        return {self.metric: 0.0}


def grade_each(
    task: Task, contexts: list[dict], questions: list[list[str]], answers: list[str]
) -> list[dict[str, float]]:
    """Each context's scores from its own slice of ``answers`` (to all ``questions``, flattened in order)."""
    scores, start = [], 0
    for context, qs in zip(contexts, questions):
        scores.append(task.grade(context, answers[start : start + len(qs)]))
        start += len(qs)
    return scores
