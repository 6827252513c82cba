"""Failures inside a training run: each scores 0 with its reason in the ledger and is counted in the
logs while the run goes on, until more than `max_failed_fraction` of a batch fails."""

import copy
import csv
import json
import math

import lightning as L
import pytest
import torch
from peft.tuners.lora import LoraLayer

from seal_lightning import (
    InnerConfig,
    KnowledgeDataModule,
    PolicyLoRA,
    SamplingConfig,
    SEALPolicy,
    SelfEditCallback,
)
from seal_lightning.inner.batched import BatchedLoRA
from seal_lightning.inner.multi_lora import MultiLoRALinear
from seal_lightning.outer import OuterConfig

LONG = " ".join(f"Sentence {i} says that the river Oskel is wide." for i in range(400))  # > 1024 tokens
GOOD = "The river Oskel flows past Velmora.\nVelmora is a town on the Oskel."
SELF_EDITS = [
    "",  # a generation of zero tokens
    "ok",  # no usable line
    "MEMORYHOG: this self-edit's inner loop runs out of memory.",
    "EXPLODE: this self-edit's inner loss turns non-finite.",
    GOOD,
]


class FaultyEngine(BatchedLoRA):
    """The batched engine, but a job whose self-edit says MEMORYHOG raises an out-of-memory error and
    one that says EXPLODE trains with an infinite learning rate."""

    def _run(self, base, tokenizer, jobs):
        if any("MEMORYHOG" in c for job in jobs for _, c in job.sequences):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        for job in jobs:
            if any("EXPLODE" in c for _, c in job.sequences):
                job.lr = math.inf
        return super()._run(base, tokenizer, jobs)


def _fit(tmp_path, max_failed_fraction):
    passages = [
        {"id": "short", "context": GOOD, "questions": [{"question": "Where is Velmora?", "answer": "Oskel"}]},
        {"id": "long", "context": LONG, "questions": [{"question": "Is the Oskel wide?", "answer": "yes"}]},
    ]
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(passages))
    policy = SEALPolicy(
        model="tiny-random-llama",
        lora=PolicyLoRA(r=4, alpha=8),
        sampling=SamplingConfig(max_new_tokens=8),
        inner=InnerConfig(r=4, alpha=8, epochs=2, answer_tokens=4),
        outer=OuterConfig(k=len(SELF_EDITS), threshold=-1.0, max_failed_fraction=max_failed_fraction),
    )
    rollout = policy.rollout
    rollout.engine = FaultyEngine(rollout.inner)
    rollout.sample = lambda contexts, k, seed, base=False, task=None, for_scoring=False: (
        [rollout.format_prompt(rollout.task.self_edit_prompt(c)) for c in contexts],
        [SELF_EDITS[:k] for _ in contexts],
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        callbacks=[SelfEditCallback()],
    )
    dm = KnowledgeDataModule(path=str(data), train_size=2, val_size=0, test_size=0, batch_size=2)
    trainer.fit(policy, datamodule=dm)
    return [json.loads(line) for line in (tmp_path / "self_edits.jsonl").read_text().splitlines()]


def test_failures_score_zero_with_reason_and_the_run_goes_on(tmp_path):
    with pytest.warns(UserWarning, match="scored 0"):
        records = _fit(tmp_path, max_failed_fraction=0.95)
    short = {r["sample"]: r for r in records if r["context_id"] == "short"}
    assert short[0]["error"] == short[1]["error"] == "self-edit has no line of at least 8 characters"
    assert short[2]["error"].startswith("out of memory: CUDA out of memory")
    assert short[3]["error"].startswith("inner loss is nan")
    assert "error" not in short[4] and short[4]["inner_loss"] > 0 and short[4]["kept"]
    for r in records:
        if "error" in r:
            assert r["reward"] == 0.0 and not r["kept"]
    long = [r for r in records if r["context_id"] == "long"]
    assert len(long) == 5 and all(r["error"].startswith("self-edit prompt has ") for r in long)
    assert "exceeds the model's context of 1024" in long[0]["error"]
    metrics = [
        row for row in csv.DictReader(next(tmp_path.glob("logs/version_*/metrics.csv")).open()) if row["train/failed"]
    ]
    assert float(metrics[0]["train/failed"]) == 9 and metrics[0]["train/sft_loss"]  # the M-step still ran


def test_too_many_failures_stop_the_run(tmp_path):
    with pytest.raises(
        RuntimeError, match=r"9 of 10 self-edits in batch 0 of epoch 0 failed .*max_failed_fraction=0.5"
    ):
        _fit(tmp_path, max_failed_fraction=0.5)
    assert len((tmp_path / "self_edits.jsonl").read_text().splitlines()) == 10  # the reasons are on disk


@pytest.mark.parametrize("engine_type", ["batched", "sequential"])
def test_out_of_memory_after_the_adapters_are_injected_leaves_the_other_jobs_exact(tiny, engine_type):
    """The retry reuses the injected LoRA layers instead of wrapping them a second time."""
    from seal_lightning.inner import ENGINES, InnerJob

    model, tok = tiny
    cfg = InnerConfig(engine=engine_type, r=4, alpha=8, epochs=2, answer_tokens=4)
    jobs = [InnerJob([("", GOOD)], ["Where is Velmora?"], seed=1), InnerJob([("", SELF_EDITS[2])], ["Where?"], seed=2)]
    clean_base, retried_base = (copy.deepcopy(model).requires_grad_(False) for _ in range(2))
    clean = ENGINES[engine_type](cfg).run(clean_base, tok, jobs[:1])

    class LateOOM(ENGINES[engine_type]):
        def _train(self, *args):  # sequential
            if any("MEMORYHOG" in c for _, c in args[-1].sequences):
                raise torch.OutOfMemoryError("CUDA out of memory")
            return super()._train(*args)

        def _run_group(self, model, tokenizer, group, rows):  # batched
            if any("MEMORYHOG" in c for job in group for _, c in job.sequences):
                raise torch.OutOfMemoryError("CUDA out of memory")
            return super()._run_group(model, tokenizer, group, rows)

    good, hog = LateOOM(cfg).run(retried_base, tok, jobs)
    assert hog.error.startswith("out of memory") and good.error is None
    assert good.extra["losses"] == clean[0].extra["losses"] and good.answers == clean[0].answers
    adapters = lambda m: sum(isinstance(x, (MultiLoRALinear, LoraLayer)) for x in m.modules())  # noqa: E731
    assert adapters(retried_base) == adapters(clean_base) > 0  # no second layer of adapters after the retry
