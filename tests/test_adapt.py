"""`seal adapt` on a trained tiny policy: an adapter per document that plain peft loads, a merged model
that plain transformers loads, a folder that resumes and is never overwritten, and the stream."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from seal_lightning.adapt import load_factors
from seal_lightning.adapt.stream import _embed
from seal_lightning.adapt.teach import Teacher
from seal_lightning.cli import main
from seal_lightning.cli.adapt import run_config
from seal_lightning.cli.export import rebuild_policy
from seal_lightning.lm.lora_io import merge_into

DOCS = ["--documents", "builtin:fictional:12", "--limit", "4", "--group", "2", "--no_progress"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_fp32():
    """One thread (the tiny model gains nothing from more); the inner copy in fp32 on every CPU
    (``inner.dtype: auto`` would pick bf16 where it is fast), so the adapters compare exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("seal_lightning.lm.models.fast_bf16", lambda: False)
        yield
    torch.set_num_threads(threads)


def _adapt(ckpt, out, *extra: str):
    return main(["adapt", "--ckpt_path", str(ckpt), "--output", str(out), *DOCS, *extra])


@pytest.fixture(scope="module")
def adapted(lora_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "out"
    _adapt(lora_ckpt, out, "--merge")
    return out


def _ledger(out):
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]


@torch.no_grad()
def _logits(model, tokenizer):
    enc = tokenizer(["The river that runs through the old town is called", "Hi"], return_tensors="pt", padding=True)
    return model(**enc).logits


def test_each_document_gets_a_trained_adapter_that_peft_loads_on_the_saved_base(adapted, lora_ckpt):
    records = _ledger(adapted)
    assert [r["id"] for r in records] == [f"fictional-0-{i}" for i in range(4)]
    assert all(r["self_edits"][0].strip() and r["adapter"] and not r["errors"] for r in records)
    assert all(set(r["before"]) == set(r["after"]) == {"f1", "em", "contains"} for r in records)
    base = AutoModelForCausalLM.from_pretrained(adapted / "base")
    tokenizer = AutoTokenizer.from_pretrained(adapted / "base")
    config = run_config(str(lora_ckpt), None)
    assert config and config.endswith("config.yaml")  # the fit's own settings, found beside the checkpoint
    frozen = rebuild_policy(lora_ckpt, config).rollout.frozen_copy()  # the policy merged, in inner.dtype
    assert all(torch.equal(w, frozen.state_dict()[k]) for k, w in base.state_dict().items())
    factors = load_factors(adapted / records[1]["adapter"])
    assert min(B.abs().sum() for _, B, _ in factors.values()) > 0  # every B trained away from its zero start
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(adapted / "base"), adapted / records[1]["adapter"]
    )
    by_hand = AutoModelForCausalLM.from_pretrained(adapted / "base")
    merge_into(by_hand, factors)
    torch.testing.assert_close(_logits(peft, tokenizer), _logits(by_hand, tokenizer), atol=1e-5, rtol=0)
    assert not torch.allclose(_logits(peft, tokenizer), _logits(base, tokenizer), atol=1e-4)


def test_the_merged_model_is_the_base_with_every_update_in_order(adapted):
    merged = AutoModelForCausalLM.from_pretrained(adapted / "merged")
    tokenizer = AutoTokenizer.from_pretrained(adapted / "merged")
    by_hand = AutoModelForCausalLM.from_pretrained(adapted / "base")
    for record in _ledger(adapted):
        merge_into(by_hand, load_factors(adapted / record["adapter"]))
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(by_hand, tokenizer), atol=1e-5, rtol=0)
    summary = json.loads((adapted / "results.json").read_text())["summary"]
    assert summary["no_update"]["n"] == summary["self_edit"]["n"] == 4 and "f1_delta_se" in summary["self_edit"]


def test_a_killed_adapt_resumes_after_its_last_finished_group(adapted, lora_ckpt, tmp_path):
    out = tmp_path / "out"
    _adapt(lora_ckpt, out)
    lines = (out / "ledger.jsonl").read_text().splitlines()
    kept = sorted((out / "adapters").iterdir())[:2]
    stamps = [(p / "adapter_model.safetensors").stat().st_mtime_ns for p in kept]
    (out / "ledger.jsonl").write_text("\n".join(lines[:2]) + '\n{"id": "fictional-0-2", "tit')  # killed mid-write
    for path in sorted((out / "adapters").iterdir())[2:]:
        for file in path.iterdir():
            file.unlink()
        path.rmdir()
    _adapt(lora_ckpt, out)
    assert [(p / "adapter_model.safetensors").stat().st_mtime_ns for p in kept] == stamps  # not redone
    resumed = _ledger(out)
    assert [r["id"] for r in resumed] == [f"fictional-0-{i}" for i in range(4)]
    assert [(r["self_edits"], r["after"]) for r in resumed] == [(r["self_edits"], r["after"]) for r in _ledger(adapted)]


def test_another_adaptation_into_the_same_folder_stops(adapted, lora_ckpt, tmp_path):
    with pytest.raises(FileExistsError, match=f"{adapted} holds an adaptation with other seed"):
        _adapt(lora_ckpt, adapted, "--seed", "1")
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not empty and holds no adaptation"):
        _adapt(lora_ckpt, tmp_path)


def test_the_stream_records_each_strategy_and_resumes(adapted, lora_ckpt, tmp_path):
    out = tmp_path / "stream"
    _adapt(lora_ckpt, out, "--sequential", "merge", "route", "replay")
    saved = json.loads((out / "stream" / "retention.json").read_text())
    records, summary = saved["records"], saved["summary"]
    for record in records.values():
        assert len(record["after"]["f1"]) == 4 and all(len(row) == 4 for row in record["after"]["f1"])
    # replay's first update has nothing earlier to replay: the same adapter as merge's; later ones differ
    merge, replay = out / "stream" / "merge", out / "stream" / "replay"
    first = [load_factors(d / "0000") for d in (merge, replay)]
    assert all(torch.equal(first[0][n][1], first[1][n][1]) for n in first[0])
    later = [load_factors(d / "0002") for d in (merge, replay)]
    assert not all(torch.equal(later[0][n][1], later[1][n][1]) for n in later[0])
    assert set(summary) == {"merge", "route", "replay"} and "final_vs_merge" in summary["route"]
    assert (out / "stream" / "retention.png").stat().st_size > 0
    log = out / "stream" / "merge.jsonl"
    log.write_text("\n".join(log.read_text().splitlines()[:2]) + "\n")  # killed after two steps
    _adapt(lora_ckpt, out, "--sequential", "merge")
    again = json.loads((out / "stream" / "retention.json").read_text())["records"]["merge"]
    assert again["after"] == records["merge"]["after"]


def test_route_sends_a_question_to_the_document_it_restates(lora_ckpt):
    teacher = Teacher(rebuild_policy(lora_ckpt).rollout)
    texts = ["The Velm river runs north past Ostrava.", "Kettering Works made brass valves.", "Nine owls sat."]
    keys = torch.stack([_embed(teacher, t) for t in texts])
    assert (torch.stack([_embed(teacher, t) for t in reversed(texts)]) @ keys.T).argmax(dim=1).tolist() == [2, 1, 0]


def test_without_a_checkpoint_the_configs_untrained_policy_adapts(tmp_path):
    out = tmp_path / "untrained"
    main(["adapt", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out), *DOCS[:3], "2", "--no_progress"])
    records = _ledger(out)
    assert len(records) == 2 and all(r["adapter"] for r in records)
    assert json.loads((out / "adapt.json").read_text())["ckpt_path"] is None
    with pytest.raises(SystemExit, match="give --ckpt_path"):
        main(["adapt", "--output", str(tmp_path / "x"), *DOCS])
