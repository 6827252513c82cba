"""Bounded memory: chunked label-only losses equal the plain ones, a planned run equals an
unplanned one, and a large inner job stays inside its budget (measured in a fresh process)."""

import copy
import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from seal_lightning.inner import InnerConfig, InnerJob, memory
from seal_lightning.inner.batched import BatchedLoRA
from seal_lightning.inner.memory import FRAGMENTATION, GiB, MemoryPlan, packed_cost, split_tokens
from seal_lightning.lm.loss import token_losses
from seal_lightning.lm.sft import pack, tokenize_pair

CFG = InnerConfig(r=4, alpha=8, epochs=2, batch_size=3, answer_tokens=4, max_adapters=4)
LINES = [
    "Velmora was founded in 1623 by the merchant Arlen Quist.",
    "Its main export is copper.",
    "The river Sul flows through the old town and into the Bay of Tam.",
    "Population: 4100.",
]


def _plain(model, hidden, targets):
    return F.cross_entropy(model.get_output_embeddings()(hidden).float(), targets, reduction="none")


@pytest.mark.parametrize("trainable_head", [False, True])
def test_chunked_losses_and_gradients_equal_full_logits(tiny, trainable_head):
    model, _ = tiny
    model = copy.deepcopy(model).requires_grad_(False)
    model.get_output_embeddings().requires_grad_(trainable_head)
    torch.manual_seed(0)
    hidden = torch.randn(37, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, model.config.vocab_size, (37,))
    weights = torch.rand(37)  # a weighted sum, as the per-adapter means are
    grads = []
    for losses_of in (lambda: _plain(model, hidden, targets), lambda: token_losses(model, hidden, targets, chunk=8)):
        losses = losses_of()
        (losses * weights).sum().backward()
        head = model.get_output_embeddings().weight
        grads.append((losses.detach(), hidden.grad.clone(), None if head.grad is None else head.grad.clone()))
        hidden.grad, head.grad = None, None
    (plain, plain_grad, plain_head), (chunked, chunked_grad, chunked_head) = grads
    assert torch.allclose(chunked, plain, atol=1e-4)
    assert torch.allclose(chunked_grad, plain_grad, atol=1e-5)
    assert (plain_head is None) == (not trainable_head)
    if trainable_head:
        assert torch.allclose(chunked_head, plain_head, atol=1e-5)


def test_soft_capped_logits_are_chunked_exactly(tiny):
    model, _ = tiny
    model = copy.deepcopy(model).requires_grad_(False)
    model.config.final_logit_softcapping = 5.0
    torch.manual_seed(1)
    hidden = torch.randn(20, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, model.config.vocab_size, (20,))
    token_losses(model, hidden, targets, chunk=6).sum().backward()
    chunked = hidden.grad.clone()
    hidden.grad = None
    capped = torch.tanh(model.get_output_embeddings()(hidden).float() / 5.0) * 5.0
    plain = F.cross_entropy(capped, targets, reduction="none")
    plain.sum().backward()
    assert torch.allclose(token_losses(model, hidden.detach(), targets, chunk=6), plain.detach(), atol=1e-4)
    assert torch.allclose(chunked, hidden.grad, atol=1e-5)


def _jobs():
    return [
        InnerJob([("", line) for line in LINES[: 2 + k % 3]], ["Who founded Velmora?"], seed=k, lr=1e-3 * (k + 1))
        for k in range(6)
    ]


def test_tight_budget_splits_steps_and_groups_without_changing_results(tiny, monkeypatch):
    model, tok = tiny
    free = BatchedLoRA(dataclasses.replace(CFG, memory_budget=64.0))
    free_results = free.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs())
    # room for 2.5 adapters beside one row: 2 adapters per group, one row per forward/backward
    plan, longest = free.plan, max(len(tokenize_pair(tok, "", line, 512, False)[0]) for line in LINES)
    budget = (plan.reserve + 2.5 * plan.per_adapter + plan.activation_bytes(longest, longest)) * FRAGMENTATION / GiB
    passes = []
    monkeypatch.setattr(memory, "split_tokens", lambda *a: passes.append(split_tokens(*a)) or passes[-1])
    tight = BatchedLoRA(dataclasses.replace(CFG, memory_budget=budget))
    tight_results = tight.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs())
    assert free.width == 4 and tight.width == 2
    assert max(len(groups) for groups in passes) > 1  # a step went through in several passes
    for a, b in zip(free_results, tight_results):
        assert a.steps == b.steps and a.error is None and b.error is None
        assert max(abs(x - y) for x, y in zip(a.extra["losses"], b.extra["losses"])) < 1e-4
        assert a.answers == b.answers


def test_packed_cost_counts_padding_like_pack(tiny):
    _, tok = tiny
    plan = MemoryPlan(GiB, per_token=10.0, per_slot=1.0, per_adapter=0, reserve=0, per_cached_token=0.0)
    rows = {0: [300, 100], 1: [300]}  # pack(length=512): bins [300(0), 100(0)], [300(1)], both 400 wide
    packed = pack([([1] * n, [1] * n) for k in rows for n in rows[k]], length=512)
    assert packed.input_ids.numel() == 800
    # adapter 0 owns 400 tokens, adapter 1 its 300 and the second bin's 100 of padding
    assert packed_cost(plan, rows, 512) == 10.0 * 800 + 1.0 * 2 * 400


def test_a_budget_that_holds_no_adapter_fails_naming_the_field(tiny):
    model, tok = tiny
    engine = BatchedLoRA(dataclasses.replace(CFG, memory_budget=0.001))
    with pytest.raises(MemoryError, match="inner.memory_budget 0.00 GiB holds no adapter"):
        engine.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs())


def test_checkpointing_gives_the_same_losses_with_less_saved_per_token(tiny):
    model, tok = tiny
    plain, ckpt = (BatchedLoRA(dataclasses.replace(CFG, checkpointing=c, memory_budget=8.0)) for c in (False, True))
    a = plain.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs()[:2])
    b = ckpt.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs()[:2])
    assert max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r.extra["losses"], s.extra["losses"])) < 1e-4
    assert ckpt.plan.per_token < plain.plan.per_token


LARGE_JOB = textwrap.dedent("""
    import copy, json, sys, torch
    torch.set_num_threads(2)
    from seal_lightning.inner import InnerConfig, InnerJob
    from seal_lightning.inner.batched import BatchedLoRA
    from seal_lightning.lm.models import TINY, load_model

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    model, tok = load_model(TINY)
    model.requires_grad_(False)
    with torch.no_grad():
        model(input_ids=torch.arange(64)[None])  # page the weights in before measuring
    text = " ".join(f"fact {i}: the value of item {i} is {i * 7}." for i in range(60))
    jobs = [InnerJob([("", text)] * 8, ["What is the value of item 3?"], seed=k) for k in range(8)]
    budget = float(sys.argv[1])
    engine = BatchedLoRA(InnerConfig(r=8, alpha=16, epochs=1, batch_size=8, max_length=1024, answer_tokens=4,
                                     max_adapters=8, memory_budget=budget))
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak
    start = status("VmRSS")
    results = engine.run(model, tok, jobs)
    print(json.dumps({"growth": status("VmHWM") - start, "width": engine.width,
                      "errors": [r.error for r in results]}))
""")


@pytest.mark.parametrize("budget_gib", [1.0, 2.0])
def test_a_large_inner_job_stays_inside_its_budget(budget_gib):
    """8 adapters x 8 rows x ~1000 tokens: unplanned, the step's logits alone would be 12 GB."""
    out = subprocess.run(
        [sys.executable, "-c", LARGE_JOB, str(budget_gib)], capture_output=True, text=True, timeout=600, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] == [None] * 8
    assert report["growth"] <= 1.2 * budget_gib * GiB, report
