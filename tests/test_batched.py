"""The batched multi-LoRA engine must equal K sequential peft runs, step for step."""

import copy
import dataclasses
import math

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from seal_lightning.inner import InnerConfig, InnerJob, SequentialLoRA
from seal_lightning.inner.batched import BatchedLoRA, routed

CFG = InnerConfig(r=4, alpha=8, epochs=3, batch_size=2, answer_tokens=6)
LINES = [
    "Velmora was founded in 1623 by the merchant Arlen Quist.",
    "Its main export is copper.",
    "The river Sul flows through the old town and into the Bay of Tam.",
    "Population: 4100.",
    "Every spring the town holds the Festival of Lanterns, which lasts nine days and draws visitors.",
]
QUESTIONS = ["Who founded Velmora?", "What does Velmora export?"]
TARGETS = ["the merchant Arlen Quist", "copper"]


def _jobs():  # different lengths, learning rates and epochs
    return [
        InnerJob([("", line) for line in LINES], QUESTIONS, seed=1, lr=1e-3, targets=TARGETS),
        InnerJob([("", LINES[1])], QUESTIONS[:1], seed=2, lr=5e-3, epochs=5, targets=TARGETS[:1]),
        InnerJob([("", line) for line in LINES[2:]], QUESTIONS, seed=3, lr=2e-3, epochs=2, targets=TARGETS[::-1]),
        InnerJob([("Title\n", line) for line in LINES[:2]], QUESTIONS, seed=4, lr=1e-2, eos=True),
    ]


def _sequential(tiny, job):
    """One peft run; returns its result and its LoRA weights by module name."""
    model, tok = tiny
    base = copy.deepcopy(model).requires_grad_(False)
    (result,) = SequentialLoRA(CFG).run(base, tok, [job])
    weights = {  # peft injected its LoRA layers into `base` in place
        name: (module.lora_A["inner"].weight.detach().clone(), module.lora_B["inner"].weight.detach().clone())
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer)
    }
    return result, weights


@pytest.fixture(scope="module")
def batched(tiny):
    model, tok = tiny
    engine = BatchedLoRA(CFG)
    results = engine.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs())
    return engine, results


def test_losses_and_weights_match_sequential_peft(tiny, batched):
    engine, results = batched
    for k, job in enumerate(_jobs()):
        solo, weights = _sequential(tiny, job)
        got = results[k].extra["losses"]
        assert len(got) == len(solo.extra["losses"]) == solo.steps
        assert max(abs(a - b) for a, b in zip(got, solo.extra["losses"])) < 1e-4
        assert abs(results[k].loss - solo.loss) < 1e-4
        assert weights.keys() == engine.layers.keys()
        for name, (a, b) in weights.items():  # Adam's first steps normalise tiny gradients, so the
            # rounding of packed vs padded matmuls shows at ~1e-5 in weights of ~1e-2
            assert torch.allclose(engine.layers[name].A[k], a, atol=3e-5), name
            assert torch.allclose(engine.layers[name].B[k], b, atol=3e-5), name
        assert results[k].answers == solo.answers
        if job.targets:  # the teacher-forced score of each adapter, packed together, equals peft's
            assert results[k].logprobs == pytest.approx(solo.logprobs, abs=1e-4)
            assert len(results[k].logprobs) == len(job.questions)
        else:
            assert results[k].logprobs is None and solo.logprobs is None


def test_batched_answers_equal_each_adapter_alone(tiny, batched):
    model, tok = tiny
    _, together = batched
    for k, job in enumerate(_jobs()):
        (alone,) = BatchedLoRA(CFG).run(copy.deepcopy(model).requires_grad_(False), tok, [job])
        assert alone.answers == together[k].answers and len(alone.answers) == len(job.questions)


def test_nan_adapter_stops_and_others_are_unaffected(tiny, batched):
    model, tok = tiny
    _, clean = batched
    jobs = _jobs()
    jobs[1].lr = 1e30  # blows up after its first step
    results = BatchedLoRA(CFG).run(
        copy.deepcopy(model).requires_grad_(False), tok, jobs + [InnerJob([], ["q"], seed=0)]
    )
    assert results[1].error.startswith("inner loss is") and results[1].answers == [] and math.isnan(results[1].loss)
    assert results[4].error == "self-edit has no usable text"
    for k in (0, 2, 3):
        # other adapters' rows change how a step is packed, hence float rounding, not the values
        assert results[k].error is None and results[k].extra["losses"] == pytest.approx(
            clean[k].extra["losses"], rel=1e-5
        )
        assert results[k].answers == clean[k].answers


def test_saved_adapter_loads_with_plain_peft(tiny, batched, tmp_path):
    model, tok = tiny
    engine, _ = batched
    engine.save_adapter(3, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "adapter")
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with routed(engine.layers, torch.tensor([3])):
            got = engine.base(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("engine_type", [BatchedLoRA, SequentialLoRA])
def test_engines_report_progress_job_by_job(tiny, engine_type):
    model, tok = tiny
    jobs = _jobs()[:3] + [InnerJob([], QUESTIONS, seed=5)]
    done = []
    engine = engine_type(dataclasses.replace(CFG, max_adapters=2))
    engine.run(copy.deepcopy(model).requires_grad_(False), tok, jobs, on_done=done.append)
    assert sum(done) == len(jobs)
    assert done == ([1, 2, 1] if engine_type is BatchedLoRA else [1, 1, 1, 1])  # the empty job first


def test_padding_takes_free_slots_and_leaves_real_tokens_exact():
    """A packed bin's padding (owner -1) fills the adapters with fewest tokens, so the grid stays as
    long as the busiest adapter's real tokens; every real token still gets its own adapter's update."""
    from seal_lightning.inner.multi_lora import MultiLoRALinear, Routing

    torch.manual_seed(0)
    layer = MultiLoRALinear(torch.nn.Linear(6, 5), k=3, r=2, scale=0.5, dropout=0.0)
    torch.nn.init.normal_(layer.A)
    torch.nn.init.normal_(layer.B)
    owner = torch.tensor([0, 0, 0, 0, 1, 2, -1, -1, -1, -1, -1])
    routing = Routing(owner)
    assert routing.rows == 4  # without filling, the padding on adapter 2 would make it 6
    assert sorted(routing.owner[:6].tolist()) == [0, 0, 0, 0, 1, 2]
    x = torch.randn(len(owner), 6)
    layer.routing = routing
    with torch.no_grad():
        out = layer(x)
        for i, k in enumerate(owner[:6].tolist()):
            expected = layer.base(x[i]) + 0.5 * layer.B[k] @ (layer.A[k] @ x[i])
            torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-6)


def test_targets_are_scored_in_the_answers_prefill(tiny, monkeypatch):
    """With targets on every job, the batched engine takes their log-probabilities from answering's
    own forward (no second pass) and they equal peft's adapter scored alone."""
    from seal_lightning.inner import batched as batched_module

    model, tok = tiny
    jobs = [job for job in _jobs() if job.targets]
    monkeypatch.setattr(batched_module, "row_losses", lambda *a: pytest.fail("a second log-prob pass ran"))
    results = BatchedLoRA(CFG).run(copy.deepcopy(model).requires_grad_(False), tok, jobs)
    for job, result in zip(jobs, results):
        solo, _ = _sequential(tiny, job)
        assert result.answers == solo.answers
        assert result.logprobs == pytest.approx(solo.logprobs, abs=1e-4) and len(result.logprobs) == len(job.questions)


def test_adapters_per_group_fill_one_bin_a_step(tiny):
    """The engine trains together as many adapters as one ``pack_length`` bin holds a step's tokens
    of (here 2 rows of ~13 tokens an adapter: 40 tokens take one adapter, 512 all four)."""
    model, tok = tiny
    for pack_length, width in ((40, 1), (512, 4)):
        engine = BatchedLoRA(dataclasses.replace(CFG, pack_length=pack_length, epochs=1))
        engine.run(copy.deepcopy(model).requires_grad_(False), tok, _jobs())
        assert engine.width == width
