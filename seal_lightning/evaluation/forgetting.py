"""Catastrophic forgetting (SEAL §5): the self-edits of contexts 1..N applied one after another to ONE model.

Update i trains a LoRA adapter on context i's self-edit (from the current policy) on top of the model
left by updates 1..i-1, then merges it into that model. After each update every context's questions
are answered, giving the N×N retention matrix: ``after[i][j]`` is the score on context j after
updates 1..i+1 (above the diagonal: contexts not learned yet), ``before[j]`` the score before any.
An unusable self-edit leaves the model unchanged (its row repeats the previous one) and is listed in
``errors``. Each context's score after all N updates is the result-table condition ``sequential``.
"""

from __future__ import annotations

import copy

import torch

from ..inner import InnerResult
from ..lm.lora_io import merge_into
from ..rollout import Rollout
from ..tasks import SelfEditError, grade_each
from ..utils import derive_seed


def forgetting(rollout: Rollout, contexts: list[dict], seed: int) -> tuple[list[dict], dict]:
    """Result-table rows (condition ``sequential``) and the retention record (``forgetting.json``)."""
    with torch.inference_mode(False):  # the model is updated in place, even in Lightning's test loop
        return _forgetting(rollout, contexts, seed)


def _forgetting(rollout: Rollout, contexts: list[dict], seed: int) -> tuple[list[dict], dict]:
    task = rollout.task
    edits = [row[0] for row in rollout.sample(contexts, 1, derive_seed(seed, "edits"))[1]]
    questions = [rollout.question_prompts(c) for c in contexts]
    flat = [q for qs in questions for q in qs]
    model = rollout.frozen_copy()
    before = grade_each(task, contexts, questions, rollout.answer_with(model, flat))
    after, errors = [], []
    for i, (context, edit) in enumerate(zip(contexts, edits)):
        try:
            job = task.inner_job(context, edit, derive_seed(seed, i))
        except SelfEditError as err:
            result = InnerResult(answers=[], error=str(err))
        else:
            job.questions, job.keep_adapter = flat, True
            (result,) = rollout.run_inner([job], base=copy.deepcopy(model))  # the engine modifies its base
        if result.error is None:
            merge_into(model, result.extra["adapter"])
            after.append(grade_each(task, contexts, questions, result.answers))
        else:
            after.append(after[-1] if after else before)
        errors.append(result.error)
    rows = [{"context_id": c["id"], "condition": "sequential", **after[-1][j]} for j, c in enumerate(contexts)]
    metrics = list(before[0])
    record = {
        "contexts": [c["id"] for c in contexts],
        "metric": task.metric,
        "self_edits": edits,
        "errors": errors,
        "before": {m: [s[m] for s in before] for m in metrics},
        "after": {m: [[s[m] for s in row] for row in after] for m in metrics},
    }
    return rows, record
