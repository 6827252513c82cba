"""A stream of documents taught one after another, and what each way of applying them forgets.

Every strategy takes the documents in order with the self-edits of ``seal adapt``'s ledger and,
after the update for document i, answers every document's questions: ``after[i][j]`` is the score on
document j (the retention matrix of SEAL §5, ``evaluation.forgetting``'s format).

* ``merge``: each update trains on the model with every earlier update merged, then is merged too
  (SEAL's sequential self-edits).
* ``route``: one adapter per document, each trained on the policy alone (``seal adapt``'s adapters);
  a question goes to the adapter of the document, among those seen so far, nearest to it in the
  model's own embedding (mean last hidden state, cosine). Nothing is merged, so nothing is overwritten;
  what it loses is the questions routed to the wrong document.
* ``replay``: ``merge``, where each update also trains on the self-edits of up to ``replay`` earlier
  documents (drawn with a fixed seed).

Each finished step is a line of ``OUT/stream/STRATEGY.jsonl`` (with its adapter in
``OUT/stream/STRATEGY/NNNN``), so a killed stream resumes at its next step.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..evaluation.results import paired
from ..lm.lora_io import Factors, merge_into, save_peft
from ..tasks import SelfEditError, grade_each
from ..utils import derive_seed
from .run import read_log
from .teach import Teacher

STRATEGIES = ("merge", "route", "replay")


def load_factors(directory: Path) -> Factors:
    """An adapter written by ``lm.lora_io.save_peft`` (its scales folded in: scale 1)."""
    config = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_file(directory / "adapter_model.safetensors")
    factors = {}
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            B = tensors[key.replace("lora_A", "lora_B")]
            suffix = name.rsplit(".", 1)[-1]
            alpha = config["alpha_pattern"].get(name, config["alpha_pattern"].get(suffix, config["lora_alpha"]))
            factors[name] = (A, B, alpha / A.shape[0])
    return factors


def run_stream(teacher: Teacher, docs: list[dict], ledger: dict[str, dict], out: Path, strategy: str, replay: int = 2):
    """The retention record of ``strategy`` over ``docs`` (in order), resuming its finished steps."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--sequential: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    folder, log = out / "stream" / strategy, out / "stream" / f"{strategy}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    steps = read_log(log)
    before = [ledger[d["id"]]["before"] for d in docs]  # the untrained model's scores, from seal adapt
    rows = _route(teacher, docs, ledger, out) if strategy == "route" else None
    model = teacher.base
    if strategy != "route":
        model = teacher.updated([load_factors(folder / s["adapter"]) for s in steps if s["adapter"]])
    for i in range(len(steps), len(docs)):
        if strategy == "route":
            step = {"doc": docs[i]["id"], "adapter": None, "errors": [], "after": rows[i]}
        else:
            step = _sequential(teacher, docs, ledger, model, i, folder, replay if strategy == "replay" else 0)
        with open(log, "a") as f:
            f.write(json.dumps(step) + "\n")
            f.flush()
            os.fsync(f.fileno())
        steps.append(step)
    metrics = list(before[0])
    return {
        "strategy": strategy,
        "contexts": [d["id"] for d in docs],
        "metric": teacher.task.metric,
        "self_edits": [ledger[d["id"]]["self_edits"] for d in docs],
        "errors": ["; ".join(s["errors"]) or None for s in steps],
        "before": {m: [s[m] for s in before] for m in metrics},
        "after": {m: [[s[m] for s in step["after"]] for step in steps] for m in metrics},
    }


def _sequential(teacher: Teacher, docs, ledger, model: torch.nn.Module, i: int, folder: Path, replay: int) -> dict:
    """Step ``i`` of ``merge``/``replay``: train document i's update on ``model``, merge it in place."""
    doc, record = docs[i], ledger[docs[i]["id"]]
    parts = teacher.passages(doc)
    extra = []
    for j in random.Random(derive_seed(teacher.seed, "replay", i)).sample(range(i), min(replay, i)):
        for context, edit in zip(teacher.passages(docs[j]), ledger[docs[j]["id"]]["self_edits"]):
            try:
                extra += teacher.job(context, edit, []).sequences
            except SelfEditError:
                continue
    # every document's questions are answered after the merge below, so the engine answers none
    (update,) = teacher.train([doc], [parts], [record["self_edits"]], on=model, extra=[extra], answer=False)
    name = None
    if update.adapter is not None:
        name = f"{i:04d}"
        save_peft(update.adapter, folder / name)
        merge_into(model, update.adapter)
    return {"doc": doc["id"], "adapter": name, "errors": update.errors, "after": teacher.answers(model, docs)}


def _route(teacher: Teacher, docs: list[dict], ledger: dict[str, dict], out: Path) -> list[list[dict]]:
    """The ``route`` rows: after step i, each question answered by the adapter of the nearest of the
    documents 0..i (``seal adapt``'s per-document adapters; a document without one keeps the policy)."""
    prompts = [teacher.rollout.question_prompts(d) for d in docs]
    flat = [q for qs in prompts for q in qs]
    near = torch.stack([_embed(teacher, q["question"]) for d in docs for q in d["questions"]])
    keys = torch.stack([_embed(teacher, f"{d['title']}\n{d['text']}") for d in docs])
    sims = near @ keys.T  # (questions, documents)
    answers = []  # answers[d][q]: every question answered by document d's adapter
    for doc in docs:
        adapter = ledger[doc["id"]]["adapter"]
        model = teacher.updated([load_factors(out / adapter)]) if adapter else teacher.base
        answers.append(teacher.rollout.answer_with(model, flat))
    rows = []
    for i in range(len(docs)):
        routed = sims[:, : i + 1].argmax(dim=1).tolist()
        chosen = [answers[d][q] for q, d in enumerate(routed)]
        rows.append(grade_each(teacher.task, docs, prompts, chosen))
    return rows


@torch.no_grad()
def _embed(teacher: Teacher, text: str) -> torch.Tensor:
    ids = teacher.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)["input_ids"]
    hidden = teacher.base.get_decoder()(input_ids=ids.to(teacher.base.device)).last_hidden_state
    return F.normalize(hidden[0].float().mean(dim=0), dim=0).cpu()


def forgetting_summary(records: dict[str, dict]) -> dict:
    """Per strategy: the final mean score over documents and the mean forgetting (each document's
    score right after its own update minus its final score); each strategy against ``merge``,
    paired per document, with standard error and bootstrap interval."""
    summary = {}
    for name, record in records.items():
        after = record["after"][record["metric"]]
        final, n = after[-1], len(after)
        drop = [after[j][j] - final[j] for j in range(n - 1)]
        summary[name] = {"final": final, "forgetting": drop, "final_mean": sum(final) / n}
        summary[name]["forgetting_mean"] = sum(drop) / len(drop) if drop else 0.0
    for name, entry in summary.items():
        if name != "merge" and "merge" in summary and len(entry["forgetting"]):
            entry["final_vs_merge"] = paired(entry["final"], summary["merge"]["final"])
            entry["forgetting_vs_merge"] = paired(entry["forgetting"], summary["merge"]["forgetting"])
    return summary
