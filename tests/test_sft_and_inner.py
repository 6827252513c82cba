import copy
import math

import pytest
import torch

from seal_lightning.inner import InnerConfig, InnerJob, SequentialLoRA
from seal_lightning.inner.stacked_adamw import StackedAdamW
from seal_lightning.lm.sft import IGNORE, collate, pack, packed_losses, target_logprobs, tokenize_pair

CFG = InnerConfig(r=4, alpha=8, epochs=3, batch_size=2, answer_tokens=4)
TEXTS = [("", "Velmora\nVelmora was founded in 1623 by Arlen Quist."), ("", "Velmora\nIts main export is copper.")]


def test_tokenize_pair_masks_prompt_and_appends_eos(tiny):
    _, tok = tiny
    ids, labels = tokenize_pair(tok, "Question?", " Answer.", max_length=64, eos=True)
    n_prompt = len(tok("Question?")["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id
    ids, labels = tokenize_pair(tok, "Question?", " Answer.", max_length=3, eos=True)
    assert len(ids) == len(labels) == 3


def test_collate_pads_right_without_loss_on_padding():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_packed_rows_give_each_row_its_own_padded_loss(tiny):
    model, tok = tiny
    texts = [("Title\n", "Population: 4100."), *TEXTS, ("Title\n", "Mayor: Ida Renn.")]
    rows = [tokenize_pair(tok, p, c, 64, eos=False) for p, c in texts]
    lengths = [len(ids) for ids, _ in rows]
    assert lengths == [10, 21, 10, 10]
    packed = pack(rows, length=21)  # first fit, longest first: [1], [0, 2, padding], [3, padding]
    assert packed.input_ids.shape == (3, 21)
    assert packed.source.tolist() == [1] * 21 + [0] * 10 + [2] * 11 + [3] * 21
    assert packed.position_ids[1].tolist() == list(range(10)) * 2 + [0]
    with torch.no_grad():
        token_loss = packed_losses(model, packed)
        kept_row = packed.source[packed.keep]
        for i, (ids, labels) in enumerate(rows):  # each row alone, through the usual padded path
            alone = model(**collate([(ids, labels)], tok.pad_token_id)).loss
            assert (kept_row == i).sum() == sum(label != IGNORE for label in labels[1:])
            assert torch.allclose(token_loss[kept_row == i].mean(), alone, atol=1e-5)


def test_stacked_adamw_equals_separate_adamw_per_slice():
    torch.manual_seed(0)
    params = [torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 6, requires_grad=True)]
    copies = [[p[k].detach().clone().requires_grad_() for p in params] for k in range(3)]
    lrs, stacked = [1e-3, 5e-2, 1e-2], StackedAdamW(params, 3)
    separate = [torch.optim.AdamW(c, lr=lr, weight_decay=0.0) for c, lr in zip(copies, lrs)]
    for step in range(4):
        active = [True, step < 2, True]  # slice 1 stops after two steps
        grads = [torch.randn_like(p) * 10 for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        stacked.clip_grad_norm_(1.0)
        stacked.step(lrs, active)
        for k in range(3):
            if active[k]:
                for c, g in zip(copies[k], grads):
                    c.grad = g[k].clone()
                torch.nn.utils.clip_grad_norm_(copies[k], 1.0)
                separate[k].step()
    for k in range(3):
        for p, c in zip(params, copies[k]):
            assert torch.allclose(p[k], c, atol=1e-6)


def _run(tiny, jobs, config=CFG):
    model, tok = tiny
    base = copy.deepcopy(model).requires_grad_(False)
    return SequentialLoRA(config).run(base, tok, jobs)


def test_inner_training_lowers_loss_and_is_seeded(tiny):
    job = lambda epochs, seed=0: InnerJob(TEXTS, ["Who founded Velmora?"], seed=seed, epochs=epochs, lr=3e-2)  # noqa: E731
    short, long_, again, other = _run(tiny, [job(1), job(20), job(20), job(20, seed=1)])
    assert long_.error is None and long_.steps == 20 and len(long_.answers) == 1
    assert long_.loss < short.loss - 0.4  # it learns the two sentences (seeded: 10.80 -> 10.25)
    assert again.loss == long_.loss and again.answers == long_.answers  # same seed, same run
    assert other.loss != long_.loss  # another seed initialises another adapter


def test_adapter_is_fresh_for_every_job(tiny):
    job = InnerJob(TEXTS, ["Who founded Velmora?"], seed=3)
    first, _, third = _run(tiny, [job, InnerJob(TEXTS[:1], ["q"], seed=9, epochs=5), job])
    assert first.loss == third.loss  # the job in between left nothing behind


def test_empty_and_nan_jobs_are_errors_not_crashes(tiny):
    empty, fine = _run(tiny, [InnerJob([], ["q"], seed=0), InnerJob(TEXTS, ["q"], seed=0)])
    assert empty.error == "self-edit has no usable text" and empty.answers == []
    assert fine.error is None and math.isfinite(fine.loss)
    model, tok = tiny
    poisoned = copy.deepcopy(model).requires_grad_(False)
    poisoned.model.norm.weight[0] = float("nan")  # every forward now yields a NaN loss
    (nan,) = SequentialLoRA(CFG).run(poisoned, tok, [InnerJob(TEXTS, ["q"], seed=0)])
    assert nan.error == "inner loss is nan at step 0" and math.isnan(nan.loss) and nan.answers == []


def test_base_weights_are_untouched(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = copy.deepcopy(model).requires_grad_(False)
    SequentialLoRA(CFG).run(base, tok, [InnerJob(TEXTS, ["q"], seed=0)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_target_logprobs_are_the_mean_token_log_softmax_of_each_answer(tiny):
    model, tok = tiny
    prompts = ["Question: Who founded Velmora?\nAnswer:\n", "Q: What does it export?\nA:", "Where?"]
    targets = ["Arlen Quist", "copper ore and tin", "the Bay of Tam"]
    expected = []
    for prompt, target in zip(prompts, targets):  # by hand: one unpadded forward per answer
        ids, labels = tokenize_pair(tok, prompt, target, 512, eos=False)
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        n = labels.count(IGNORE)
        expected.append(sum(logp[i - 1, ids[i]].item() for i in range(n, len(ids))) / (len(ids) - n))
    one_pass = target_logprobs(model, tok, prompts, targets, 512)
    row_by_row = target_logprobs(model, tok, prompts, targets, 512, tokens=1)  # a forward per answer
    assert one_pass == pytest.approx(expected, abs=1e-4) and row_by_row == pytest.approx(expected, abs=1e-4)
    assert all(v < 0 for v in expected)


def test_training_on_the_answer_raises_its_logprob(tiny):
    model, tok = tiny
    question, gold = "Who founded Velmora?", "Arlen Quist"
    job = lambda targets: InnerJob([(question, gold)], [question], seed=0, epochs=10, lr=3e-2, targets=targets)  # noqa: E731
    trained, untargeted = _run(tiny, [job([gold]), job(None)])
    before = SequentialLoRA(CFG).logprobs(model, tok, [question], [gold])[0]
    assert untargeted.logprobs is None and len(trained.logprobs) == 1
    assert trained.logprobs[0] > before + 0.5  # seeded: -10.81 -> -10.07, the random model learns slowly
    # the question-answer pair it trained on: minus its logprob is the loss after the last step
    assert trained.extra["losses"][-1] - 0.3 < -trained.logprobs[0] < trained.extra["losses"][-1]
