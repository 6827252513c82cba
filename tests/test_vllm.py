"""vLLM's CPU build against transformers on SmolLM2: greedy agreement for the base model, a trained
inner adapter and a reloaded policy; sampling; bad setups; ``seal fit`` end to end.

Run in the environment ``bash scripts/vllm_cpu_env.sh`` makes (``--test`` runs these tests there);
elsewhere they are skipped, saying so. Both sides compute in fp32. A first divergence between the
two greedy continuations is accepted only where transformers' two best next-token logits lie within
``TIE`` of each other (a near-tie that summation order can flip), so a real bug cannot pass as drift.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NEEDS_VLLM
from peft import LoraConfig, PeftModel, get_peft_model

pytestmark = NEEDS_VLLM

from lora_noise import perturb_lora  # noqa: E402

from seal_lightning.generation.hf import generate  # noqa: E402
from seal_lightning.generation.vllm_backend import VLLMBackend, VLLMConfig  # noqa: E402
from seal_lightning.inner import InnerConfig  # noqa: E402
from seal_lightning.inner.batched import BatchedLoRA  # noqa: E402
from seal_lightning.lm.lora_io import compose, peft_factors  # noqa: E402
from seal_lightning.lm.models import load_model  # noqa: E402
from seal_lightning.tasks.knowledge.sources import load_passages  # noqa: E402
from seal_lightning.tasks.knowledge.task import KnowledgeTask  # noqa: E402

TIE = 0.02  # logits; a real bug (a wrong LoRA scale, a dropped adapter, a shifted prompt) moves them by far more
ROOT = Path(__file__).resolve().parents[1]
INNER = InnerConfig(
    r=32, alpha=64, lr=3e-3, epochs=2, batch_size=4, answer_tokens=24, dtype="float32", memory_budget=3.0
)


@pytest.fixture(scope="module")
def smollm2():
    model, tok = load_model("smollm2-135m", "float32")
    return model.eval(), tok


@pytest.fixture(scope="module")
def policy(smollm2):
    """A LoRA policy whose adapter is not zero (as after some M-steps)."""
    model, _ = smollm2
    return perturb_lora(
        get_peft_model(copy.deepcopy(model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")), 0.002
    ).eval()


@pytest.fixture(scope="module")
def backend():
    """One engine for the module (it takes ~40 s to start on 2 cores)."""
    backend = VLLMBackend("smollm2-135m", "float32", VLLMConfig(max_model_len=1024), 16, "all-linear", 32, "all-linear")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def contexts():
    return load_passages("builtin:squad")[:2]


def chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def hf_greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    return out[0, ids.shape[1] :].tolist()


def divergences(model, tok, prompts: list[str], vllm_ids: list[list[int]], n: int) -> list[tuple[int, int, float]]:
    """(prompt, position, HF top-2 margin there) of every prompt whose greedy continuations differ."""
    found = []
    with torch.no_grad():
        for i, (prompt, theirs) in enumerate(zip(prompts, vllm_ids)):
            ours = hf_greedy(model, tok, prompt, n)
            at = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            if at is None and len(ours) != len(theirs):  # one stopped at EOS where the other went on
                at = min(len(ours), len(theirs))
            if at is None:
                continue
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            logits = model(torch.cat([ids, torch.tensor([ours[:at]], dtype=ids.dtype)], dim=1)).logits[0, -1]
            top = logits.topk(2).values
            found.append((i, at, float(top[0] - top[1])))
    return found


def test_base_model_greedy_agrees_with_transformers(smollm2, backend, contexts):
    model, tok = smollm2
    task = KnowledgeTask()
    prompts = [chat(tok, q) for c in contexts for q in task.questions(c)[:4]] + [
        chat(tok, task.self_edit_prompt(contexts[0]))
    ]
    from vllm import SamplingParams

    outputs = backend.generator().llm.generate(prompts, SamplingParams(max_tokens=32, temperature=0.0), use_tqdm=False)
    assert [list(o.prompt_token_ids) for o in outputs] == [tok(p)["input_ids"] for p in prompts]  # same prompt tokens
    found = divergences(model, tok, prompts, [list(o.outputs[0].token_ids) for o in outputs], 32)
    assert all(margin < TIE for _, _, margin in found), found
    assert len(found) <= len(prompts) // 4, found  # ties are rare: most continuations agree token for token


def test_trained_inner_adapter_on_the_policy_agrees_with_transformers(smollm2, policy, backend, contexts):
    """The E-step's path: inner adapters trained on the merged policy, served composed with the
    policy's adapter; their answers equal the engine's own wherever no near-tie intervenes."""
    model, tok = smollm2
    task = KnowledgeTask()
    jobs = []
    for i, c in enumerate(contexts):
        job = task.inner_job(c, c["context"], seed=i)
        job.questions = [chat(tok, q) for q in task.questions(c)[:4]]
        job.keep_adapter = True  # the engine may train the jobs in several groups: each result keeps its adapter
        jobs.append(job)
    engine = BatchedLoRA(INNER)
    own = engine.run(copy.deepcopy(policy).merge_and_unload().requires_grad_(False), tok, copy.deepcopy(jobs))
    assert all(r.error is None for r in own)
    factors = [r.extra["adapter"] for r in own]
    served = backend.answer_adapters(policy, jobs, factors, max_new_tokens=INNER.answer_tokens, stop=INNER.answer_stop)
    tied = set()
    for k, job in enumerate(jobs):
        adapter = backend.store.put(compose(peft_factors(policy), factors[k]), "check")
        outputs = backend.generator().completions(job.questions, [adapter] * len(job.questions), max_new_tokens=24)
        hf = PeftModel.from_pretrained(copy.deepcopy(model), adapter.path).eval()
        found = divergences(hf, tok, job.questions, [list(o.token_ids) for o in outputs], 24)
        assert all(margin < TIE for _, _, margin in found), (k, found)
        tied |= {(k, i) for i, _, _ in found}
        backend.store.drop(adapter)
    pairs = [
        (own[k].answers[i], served[k][i])
        for k, job in enumerate(jobs)
        for i in range(len(job.questions))
        if (k, i) not in tied
    ]
    assert len(pairs) >= 6 and all(a == b for a, b in pairs), pairs


def test_policy_weights_are_reloaded_without_restarting_the_engine(smollm2, policy, backend, contexts):
    model, tok = smollm2
    questions = [chat(tok, q) for q in KnowledgeTask().questions(contexts[0])[:4]]
    engine = backend.generator()
    before = backend.answer(policy, None, tok, 0, questions, max_new_tokens=24, stop="\n", batch_size=8)
    first = backend.policy.adapter
    changed = perturb_lora(copy.deepcopy(policy), 0.01, seed=1, add=True)
    after = backend.answer(changed, None, tok, 1, questions, max_new_tokens=24, stop="\n", batch_size=8)
    assert backend.generator() is engine and backend.policy.adapter.id != first.id and not first.path.exists()
    assert after != before
    merged = copy.deepcopy(changed).merge_and_unload().eval()
    expected = generate(merged, tok, questions, max_new_tokens=24, stop="\n")
    outputs = engine.completions(questions, [backend.policy.adapter] * len(questions), max_new_tokens=24)
    found = divergences(merged, tok, questions, [list(o.token_ids) for o in outputs], 24)
    assert all(margin < TIE for _, _, margin in found), found
    tied = {i for i, _, _ in found}
    assert all(a == b for i, (a, b) in enumerate(zip(after, expected)) if i not in tied)


def test_sampling_is_seeded_and_uses_the_policy(smollm2, policy, backend, contexts):
    _, tok = smollm2
    policy = perturb_lora(
        copy.deepcopy(policy), 0.02, seed=2, add=True
    )  # far enough from the base that its samples differ
    prompts = [chat(tok, KnowledgeTask().self_edit_prompt(c)) for c in contexts]
    options = dict(max_new_tokens=32, temperature=0.7, top_p=0.9, batch_size=8)  # 16: base and policy may still agree
    version = 10  # weights no earlier test published
    first = backend.sample(policy, tok, version, prompts, 2, False, seed=1, **options)
    assert len(first) == 4 and all(first)
    assert backend.sample(policy, tok, version, prompts, 2, False, seed=1, **options) == first
    assert backend.sample(policy, tok, version, prompts, 2, False, seed=2, **options) != first
    assert backend.sample(policy, tok, version, prompts, 2, True, seed=1, **options) != first  # base: no policy adapter


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (VLLMConfig(max_lora_rank=48), r"model.vllm.max_lora_rank=48 is not a size vLLM accepts"),
        (VLLMConfig(kv_cache_gib=0.01), r"model.vllm.kv_cache_gib=0.01 is too small: one sequence of 8192 tokens"),
    ],
)
def test_bad_setup_fails_before_the_engine_starts(config, message):
    with pytest.raises(ValueError, match=message):
        VLLMBackend("smollm2-135m", "float32", config, 16, "all-linear", 8, "all-linear")


def test_tiny_random_model_is_refused():
    with pytest.raises(ValueError, match=r"needs a model directory or hub name, not 'tiny-random-llama'"):
        VLLMBackend("tiny-random-llama", "float32", VLLMConfig(), 16, "all-linear", 32, "all-linear")


def test_seal_fit_with_vllm_runs_end_to_end(tmp_path):
    """The quickstart, shrunk (one training and one test passage, K=2, short self-edits and answers), with
    vLLM sampling and answering: policy, base and composed inner adapters all served by the engine."""
    command = [
        sys.executable,
        "-m",
        "seal_lightning",
        "fit",
        "--config",
        str(ROOT / "configs/quickstart.yaml"),
        "--model.generation",
        "vllm",
        "--model.vllm.max_model_len",
        "1024",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.init_args.train_size",
        "1",
        "--data.init_args.test_size",
        "1",
        "--model.outer.k",
        "2",
        "--model.outer.sft_epochs",
        "1",
        "--model.inner.epochs",
        "1",
        "--model.inner.answer_tokens",
        "12",
        "--model.sampling.max_new_tokens",
        "32",
        "--model.eval.conditions",
        "[base_self_edit, self_edit]",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    ledger = [json.loads(line) for line in (tmp_path / "self_edits.jsonl").read_text().splitlines()]
    assert len(ledger) == 2 and all(r["text"] for r in ledger)
    assert "self_edit" in run.stdout and "base_self_edit" in run.stdout  # the test table after fit
