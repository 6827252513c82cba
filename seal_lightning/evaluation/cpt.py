"""Continued pretraining (SEAL Table 3): ONE inner update on the data of many contexts at once, then
closed-book answers to all of their questions.

Two conditions, each a row per context in the result table: ``cpt_passage`` (the update trains on
every context's own text) and ``cpt_self_edit`` (on one self-edit per context from the current
policy; an unusable self-edit contributes nothing and is listed in the row's ``errors``).
"""

from __future__ import annotations

from ..inner import InnerJob
from ..rollout import Rollout
from ..tasks import SelfEditError, grade_each
from ..utils import derive_seed


def continued_pretraining(rollout: Rollout, contexts: list[dict], seed: int) -> list[dict]:
    """Evaluation rows (``context_id``, ``condition``, scores) of both conditions for ``contexts``."""
    task = rollout.task
    edits = [row[0] for row in rollout.sample(contexts, 1, derive_seed(seed, "cpt"))[1]]
    questions = [rollout.question_prompts(c) for c in contexts]
    rows = []
    for condition, texts in (("cpt_passage", [None] * len(contexts)), ("cpt_self_edit", edits)):
        sequences, errors = [], {}
        for context, text in zip(contexts, texts):
            try:
                sequences += task.inner_job(context, text, seed).sequences
            except SelfEditError as err:
                errors[context["id"]] = str(err)
        job = InnerJob(sequences, [q for qs in questions for q in qs], derive_seed(seed, condition))
        (result,) = rollout.run_inner([job])
        if result.error is None:
            graded = grade_each(task, contexts, questions, result.answers)
        else:
            graded = [task.zero()] * len(contexts)
        for context, scores in zip(contexts, graded):
            failed = [e for e in (errors.get(context["id"]), result.error) if e]
            rows.append(
                {
                    "context_id": context["id"],
                    "condition": condition,
                    **scores,
                    **({"errors": failed} if failed else {}),
                }
            )
    return rows
