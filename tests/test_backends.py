"""Generation backends without vLLM installed: composed adapters, the adapter store, policy
republishing, the engines' adapter-answer hook, and the errors for a wrong setup."""

import copy
import importlib.util
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lora_noise import perturb_lora
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from seal_lightning import (
    KnowledgeDataModule,
    PolicyLoRA,
    SamplingConfig,
    SEALPolicy,
    SelfEditCallback,
)
from seal_lightning.generation import AdapterStore, PublishedPolicy, generate
from seal_lightning.inner import InnerConfig, InnerJob, SequentialLoRA
from seal_lightning.inner.batched import BatchedLoRA, routed
from seal_lightning.lm.lora_io import compose, peft_factors
from seal_lightning.outer import OuterConfig

CFG = InnerConfig(r=4, alpha=8, epochs=2, batch_size=2, answer_tokens=6)
LINES = [
    "Velmora was founded in 1623 by the merchant Arlen Quist.",
    "Its main export is copper.",
    "The river Sul flows through the old town and into the Bay of Tam.",
]
QUESTIONS = ["Who founded Velmora?", "What does Velmora export?"]
JOBS = [
    InnerJob([("", line) for line in LINES], QUESTIONS, seed=1, lr=1e-2),
    InnerJob([("", LINES[1])], QUESTIONS[:1], seed=2, lr=2e-2, epochs=3),
]
IDS = torch.tensor([[1, 50, 60, 70, 80]])


def _policy(tiny):
    """A peft policy whose LoRA is not zero (B random), as after some M-steps."""
    model, _ = tiny
    return perturb_lora(
        get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=6, target_modules="all-linear")), 0.05
    )


def test_policy_plus_inner_adapter_compose_into_one_exact_peft_adapter(tiny, tmp_path):
    model, tok = tiny
    policy = _policy(tiny)
    engine = BatchedLoRA(CFG)
    frozen = copy.deepcopy(policy).merge_and_unload().requires_grad_(False)
    engine.run(frozen, tok, JOBS[:1])  # trains on the merged policy, as the E-step does
    with torch.no_grad():
        with routed(engine.layers, torch.tensor([0])):
            expected = engine.base(input_ids=IDS).logits
    store = AdapterStore(tmp_path)
    adapter = store.put(compose(peft_factors(policy), engine.factors(0)), "inner")
    config = json.loads((adapter.path / "adapter_config.json").read_text())
    assert config["r"] == 2 + 4 and config["lora_alpha"] == 6 and not config["rank_pattern"]
    served = PeftModel.from_pretrained(copy.deepcopy(model), adapter.path)  # the base + one adapter, as vLLM sees it
    with torch.no_grad():
        assert torch.allclose(served(input_ids=IDS).logits, expected, atol=1e-5)


def test_adapter_store_names_are_fresh_and_directories_go_away(tiny, tmp_path):
    factors = peft_factors(_policy(tiny))
    store = AdapterStore(tmp_path)
    first = store.put(factors, "policy")
    store.drop(first)
    second, third = store.put(factors, "policy"), store.put(factors, "inner")
    assert not first.path.exists() and second.path.is_dir() and third.path.is_dir()
    assert len({first.name, second.name, third.name}) == 3 and (first.id, second.id, third.id) == (1, 2, 3)
    assert (second.path / "adapter_model.safetensors").is_file()
    store.close()
    assert not store.root.exists()
    ram = AdapterStore()
    assert ram.root.parent == Path("/dev/shm") or not Path("/dev/shm").is_dir()
    ram.close()


def test_policy_is_republished_exactly_when_its_weights_change(tiny, tmp_path):
    policy = _policy(tiny)
    published = PublishedPolicy(AdapterStore(tmp_path))
    first = published.current(peft_factors(policy), version=0)
    assert published.current(peft_factors(policy), version=0) is first  # same weights: same adapter
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_A" in name:
                p.add_(1.0)
    second = published.current(peft_factors(policy), version=1)
    assert (second.name, second.id) != (first.name, first.id) and not first.path.exists()
    saved = load_file(second.path / "adapter_model.safetensors")
    for name, (A, B, _) in peft_factors(policy).items():
        assert torch.equal(saved[f"base_model.model.{name}.lora_A.weight"], A)


def test_every_m_step_optimiser_step_bumps_the_weights_version(tmp_path):
    policy = SEALPolicy(
        model="tiny-random-llama",
        lora=PolicyLoRA(r=4, alpha=8),
        sampling=SamplingConfig(max_new_tokens=16),
        inner=InnerConfig(r=4, alpha=8, epochs=1),
        outer=OuterConfig(k=2, threshold=-1.0, max_failed_fraction=1.0, sft_batch_size=1),
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SelfEditCallback()],
    )
    trainer.fit(
        policy,
        datamodule=KnowledgeDataModule("builtin:fictional:6", train_size=4, val_size=0, test_size=0, batch_size=2),
    )
    kept = [json.loads(line)["kept"] for line in (tmp_path / "self_edits.jsonl").read_text().splitlines()]
    assert sum(kept) > 0 and policy.rollout.weights_version == sum(kept)  # one pair per optimiser step


@pytest.mark.parametrize("engine_type", [BatchedLoRA, SequentialLoRA])
def test_adapter_answers_hook_gets_each_trained_adapter(tiny, tmp_path, engine_type):
    """Served from a saved adapter directory (as vLLM serves them), each job's answers equal the engine's own."""
    model, tok = tiny
    own = engine_type(CFG).run(copy.deepcopy(model).requires_grad_(False), tok, copy.deepcopy(JOBS))
    store, seen = AdapterStore(tmp_path), []

    def answer_from_directories(jobs, factors):
        answers = []
        for job, f in zip(jobs, factors):
            adapter = store.put(f, "inner")
            seen.append(adapter)
            served = PeftModel.from_pretrained(copy.deepcopy(model), adapter.path)
            answers.append(generate(served, tok, job.questions, max_new_tokens=CFG.answer_tokens, stop=CFG.answer_stop))
            store.drop(adapter)
        return answers

    hooked = engine_type(CFG).run(
        copy.deepcopy(model).requires_grad_(False), tok, copy.deepcopy(JOBS), answers=answer_from_directories
    )
    assert len(seen) == 2 and not any(a.path.exists() for a in seen)
    assert [r.answers for r in hooked] == [r.answers for r in own] and all(r.answers for r in own)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"generation": "tgi"}, r"model.generation: unknown backend 'tgi'"),
        ({"generation": "vllm", "lora": None}, r"set model.lora"),
        ({"generation": "vllm", "lora": PolicyLoRA(r=48)}, r"max_lora_rank=64 is below .* = 80"),
        ({"generation": "vllm", "lora": PolicyLoRA(target_modules=["q_proj"])}, r"target_modules"),
    ],
)
def test_wrong_backend_setup_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SEALPolicy(model="tiny-random-llama", **kwargs)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_says_how_to_install():
    """(This module imported the whole package without vLLM: only choosing the backend needs it.)"""
    with pytest.raises(ImportError, match=r'pip install "seal_lightning\[vllm\]"'):
        SEALPolicy(model="tiny-random-llama", generation="vllm")
