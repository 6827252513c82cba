"""SEAL's comparison as the paper makes it, through ``seal fit`` on the tiny model: with
``include_passage`` and the ``over_context`` reward, both updates of a passage train on the passage
(one on it alone, one on the self-edit's lines plus it), and what the ledger rewards is the
self-edit's marginal value: the score after the second update minus the score after the first."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS

from seal_lightning.cli import main
from seal_lightning.inner import InnerEngine
from seal_lightning.tasks.knowledge import KnowledgeTask, load_passages, split_sentences

TINY = str(CONFIGS / "tiny.yaml")
MARGINAL = [
    *("--model.task", "seal_lightning.tasks.knowledge.KnowledgeTask", "--model.task.metric", "logprob"),
    *("--model.task.include_passage", "true", "--model.outer.reward", "over_context"),
    *("--trainer.limit_val_batches", "0"),
]


def test_both_updates_train_on_the_passage_and_the_ledger_rewards_the_self_edits_margin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls, run = [], InnerEngine.run

    def recording(self, base, tokenizer, jobs, *args, **kwargs):  # the real engine runs; its jobs are kept
        calls.append([list(job.sequences) for job in jobs])
        return run(self, base, tokenizer, jobs, *args, **kwargs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(InnerEngine, "run", recording)
            main(["fit", "--config", TINY, *MARGINAL, "--trainer.default_root_dir", "marginal"])
    finally:
        torch.set_num_threads(threads)
    passages = {p["id"]: p for p in load_passages("builtin:fictional:12")}
    records = [json.loads(line) for line in (tmp_path / "marginal" / "self_edits.jsonl").read_text().splitlines()]
    task = KnowledgeTask(include_passage=True)
    assert len(calls) == 2 and len(records) == 2 * 2 * 3  # 2 E-steps of 2 passages x K=3
    for step, sequences in enumerate(calls):
        batch = [r for r in records if r["global_step"] == step]
        for context_id in dict.fromkeys(r["context_id"] for r in batch):
            passage = passages[context_id]
            alone = [("", f"{passage['title']}\n{s}") for s in split_sentences(passage["context"])]
            assert sequences.count(alone) == 1  # one update on the passage alone
            edits = [r for r in batch if r["context_id"] == context_id]
            trained = [s for s in sequences if s != alone and s[-len(alone) :] == alone]
            usable = [r for r in edits if "error" not in r]
            assert len(trained) == len(usable)  # every usable self-edit's update also trains on the passage
            for r, seqs in zip(usable, trained):
                assert seqs == task.inner_job(passage, r["text"], 0).sequences  # its lines, then the passage
                assert r["reward"] == pytest.approx(r["post"] - r["baseline"], abs=1e-12)
            assert len({r["baseline"] for r in edits}) == 1  # one baseline per passage: its update alone
    assert any(r["reward"] != 0.0 for r in records)
