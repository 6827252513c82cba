"""Knowledge incorporation (SEAL §4.2): learn a passage from self-written implications, answer closed-book."""

from __future__ import annotations

import copy
import re
import string

from torchmetrics.functional.text import squad

from ...inner.engine import InnerJob
from ..base import SelfEditError, Task

PROMPTS = {  # the reference's default and the variants of the paper's prompt ablation
    "implications": (
        "Let's read the following passage and produce a list of implications derived directly or "
        "indirectly from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-long": (
        "Read the passage below and write a long list of implications: facts it states, facts that "
        "follow from it, and how its parts relate. One per line.\n\nPassage:\n{title}\n{context}\n\n"
        "Implications:\n"
    ),
    "implications-very-long": (
        "Read the passage below and write a very long, thorough list of implications: every fact it "
        "states or implies, restated several ways, each with its subject named. One per line.\n\n"
        "Passage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Rewrite the passage below several times in different words, keeping every fact. Separate "
        "the rewrites with newlines.\n\nPassage:\n{title}\n{context}\n\nRewrites:\n"
    ),
    "self-qa": (
        "Read the passage below and write question-answer pairs that cover all of its facts, one pair "
        'per line, as "Q: ... A: ...".\n\nPassage:\n{title}\n{context}\n\nQuestions and answers:\n'
    ),
}
QUESTION = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _template(prompt: str) -> str:
    template = PROMPTS.get(prompt, prompt)
    if "{context}" not in template:
        raise ValueError(f"task.prompt: {prompt!r} is neither one of {sorted(PROMPTS)} nor a template with {{context}}")
    return template


def normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class KnowledgeTask(Task):
    """Self-edit = lines of restated facts; each line trains as ``"{title}\\n{line}"``.

    Graded with torchmetrics SQuAD F1 and EM, plus ``contains``: the fraction of answers that
    contain a normalised gold answer, an offline stand-in for the paper's LLM yes/no grader
    that does not punish a small model for answering in full sentences.

    Args:
        prompt: a name in ``PROMPTS`` or a template with ``{title}`` and ``{context}``.
        question_template: closed-book question prompt with ``{question}``.
        include_passage: also train on the passage's sentences alongside the self-edit.
        min_line_chars: self-edit lines shorter than this are dropped.
        metric: the reward: ``f1``, ``em``, ``contains`` or ``logprob`` (the mean log-probability per
            token of each question's first gold answer, teacher-forced: no generation).
    """

    def __init__(
        self,
        prompt: str = "implications",
        question_template: str = QUESTION,
        include_passage: bool = False,
        min_line_chars: int = 8,
        metric: str = "f1",
    ) -> None:
        if metric not in ("f1", "em", "contains", "logprob"):
            raise ValueError(f"task.metric: {metric!r} is not one of f1, em, contains, logprob")
        self.metric = metric
        template = _template(prompt)
        if "{question}" not in question_template:
            raise ValueError("task.question_template must contain {question}")
        self.template = template
        self.question_template = question_template
        self.include_passage = include_passage
        self.min_line_chars = min_line_chars

    def self_edit_prompt(self, context: dict) -> str:
        return self.template.format(title=context["title"], context=context["context"])

    def with_prompt(self, prompt: str) -> KnowledgeTask:
        variant = copy.copy(self)
        variant.template = _template(prompt)
        return variant

    def lines(self, self_edit: str) -> list[str]:
        """The self-edit's usable lines, list markers removed."""
        lines = (_BULLET.sub("", line).strip() for line in self_edit.splitlines())
        return [line for line in lines if len(line) >= self.min_line_chars]

    def inner_job(self, context: dict, self_edit: str | None, seed: int) -> InnerJob:
        passage = split_sentences(context["context"])
        if self_edit is None:
            lines = passage
        else:
            lines = self.lines(self_edit)
            if not lines:
                raise SelfEditError(f"self-edit has no line of at least {self.min_line_chars} characters")
            if self.include_passage:
                lines = lines + passage
        title = context["title"]
        sequences = [("", f"{title}\n{line}" if title else line) for line in lines]
        return InnerJob(sequences=sequences, questions=self.questions(context), seed=seed)

    def questions(self, context: dict) -> list[str]:
        return [self.question_template.format(question=q["question"]) for q in context["questions"]]

    def targets(self, context: dict) -> list[str]:
        return [q["answers"][0] for q in context["questions"]]

    def grade(self, context: dict, answers: list[str]) -> dict[str, float]:
        questions = context["questions"]
        if len(answers) != len(questions):
            raise ValueError(f"context {context['id']}: {len(answers)} answers for {len(questions)} questions")
        preds = [{"prediction_text": a, "id": str(i)} for i, a in enumerate(answers)]
        target = [
            {"answers": {"text": q["answers"], "answer_start": [0] * len(q["answers"])}, "id": str(i)}
            for i, q in enumerate(questions)
        ]
        scores = squad(preds, target)
        contains = [any(normalize(g) in normalize(a) for g in q["answers"]) for a, q in zip(answers, questions)]
        return {
            "f1": scores["f1"].item() / 100,
            "em": scores["exact_match"].item() / 100,
            "contains": sum(contains) / len(contains),
        }

    def zero(self) -> dict[str, float]:
        return {"f1": 0.0, "em": 0.0, "contains": 0.0}
