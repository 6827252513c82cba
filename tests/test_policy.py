import dataclasses
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from lora_noise import perturb_lora

from seal_lightning import PolicyLoRA, SamplingConfig, SEALPolicy
from seal_lightning.inner import InnerConfig
from seal_lightning.lm.models import TINY
from seal_lightning.lm.sft import label_count, tokenize_pair
from seal_lightning.outer import select
from seal_lightning.outer.mstep import sft_loss, sft_rows
from seal_lightning.tasks.knowledge import fictional_passages
from seal_lightning.utils import derive_seed


@pytest.fixture(scope="module")
def policy():
    """Inner updates in fp32 on every CPU (``inner.dtype: auto`` takes bf16 where it is fast, and bf16
    moves the batched engine's sums past the tolerances of these comparisons)."""
    module = SEALPolicy(
        model=TINY,
        lora=PolicyLoRA(r=4, alpha=8),
        sampling=SamplingConfig(max_new_tokens=12),
        inner=InnerConfig(dtype="float32"),
    )
    module.configure_model()
    return module


def _manual_completion_loss(policy, prompt, completion):
    ids, labels = tokenize_pair(policy.tokenizer, prompt, completion, 1024, eos=True)
    logits = policy.model(input_ids=torch.tensor([ids])).logits[0]
    n_prompt = labels.count(-100)
    target = torch.tensor(ids[n_prompt:])
    losses = F.cross_entropy(logits[n_prompt - 1 : -1], target, reduction="none")
    return losses.sum(), len(target)


def _loss(policy, pairs, tokens=None):
    return sft_loss(policy.model, policy.tokenizer.pad_token_id, sft_rows(policy.tokenizer, pairs, 1024), tokens)


def test_sft_loss_is_on_self_edit_tokens_only(policy):
    pairs = [
        ("Read this passage about Velmora and list implications.", " Velmora exports copper."),
        ("Short prompt.", " A longer self-edit line that gets padded against the other one, twice over."),
    ]
    total, count = zip(*(_manual_completion_loss(policy, p, c) for p, c in pairs))
    expected = sum(total) / sum(count)  # token mean over both self-edits, no prompt, no padding
    assert torch.allclose(_loss(policy, pairs), expected, atol=1e-5)
    # the prompt only conditions: the loss differs from a loss that also scores the prompt tokens
    alone, n = _manual_completion_loss(policy, *pairs[0])
    assert torch.allclose(_loss(policy, pairs[:1]), alone / n, atol=1e-5)


def test_step_split_across_ranks_sums_to_the_single_process_loss(policy):
    """Each rank's share of a step, scaled as in training_step, adds up to the one-process loss and gradient."""
    pairs = [
        ("Prompt one.", " a short edit"),
        ("Another prompt here.", " a somewhat longer self-edit text"),
        ("Third.", " x"),
    ]
    params = [p for p in policy.parameters() if p.requires_grad]
    whole = _loss(policy, pairs)
    expected = torch.autograd.grad(whole, params)
    tokens = label_count(sft_rows(policy.tokenizer, pairs, 1024))
    assert tokens == sum(
        sum(label != -100 for label in labels[1:]) for _, labels in sft_rows(policy.tokenizer, pairs, 1024)
    )
    world = 2
    shares = [_loss(policy, pairs[rank::world], tokens) * world for rank in range(world)]
    assert torch.allclose(sum(shares) / world, whole, atol=1e-5)
    grads = [torch.autograd.grad(share, params) for share in shares]
    for e, g0, g1 in zip(expected, *grads):
        assert torch.allclose((g0 + g1) / world, e, atol=1e-5)


def test_select_best_of_k_and_threshold():
    assert select([0.1, 0.3, 0.2], "best_of_k", 0.0) == [False, True, False]
    assert select([0.3, 0.3, 0.2], "best_of_k", 0.0) == [True, False, False]  # ties: first sample
    assert select([-0.1, 0.0, -0.2], "best_of_k", 0.0) == [False, False, False]  # must beat threshold
    assert select([0.1, 0.3, 0.2], "all", 0.15) == [False, True, True]
    assert select([0.0, -0.1, -0.2], "best_of_k", -1.0, [True, False, False]) == [False, True, False]  # failed: never
    assert select([0.0, 0.2], "all", -1.0, [True, False]) == [False, True]


def test_sampling_is_seeded(policy):
    contexts = fictional_passages(2, seed=5)
    prompts, a = policy.rollout.sample(contexts, k=2, seed=7)
    assert prompts == [policy.rollout.format_prompt(policy.rollout.task.self_edit_prompt(c)) for c in contexts]
    _, b = policy.rollout.sample(contexts, k=2, seed=7)
    _, c = policy.rollout.sample(contexts, k=2, seed=8)
    assert a == b and a != c
    assert len(a) == 2 and all(len(row) == 2 for row in a)


def test_frozen_copy_equals_policy_with_its_lora(policy, monkeypatch):
    monkeypatch.setattr(policy.rollout, "inner", dataclasses.replace(policy.rollout.inner, dtype="float32"))
    perturb_lora(policy.model, 0.02)
    ids = torch.tensor([[1, 200, 300, 400]])
    copy = policy.rollout.frozen_copy()
    assert not any(p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        assert torch.allclose(copy(input_ids=ids).logits, policy.model(input_ids=ids).logits, atol=1e-4)
        with policy.model.disable_adapter():
            base = policy.model(input_ids=ids).logits
        assert not torch.allclose(copy(input_ids=ids).logits, base, atol=1e-4)


def test_score_updates_grades_before_and_after(policy):
    contexts = fictional_passages(2, seed=1)
    baseline, outcomes = policy.rollout.score_updates(contexts, [[None, "x"], ["A long enough line of text."]], seed=0)
    assert len(baseline) == 2 and set(baseline[0].scores) == {"f1", "em", "contains", "logprob"}
    # a self-edit that cannot be used scores 0, and leaves the gold answers as likely as before
    assert outcomes[0][1].error.startswith("self-edit has no line")
    assert outcomes[0][1].scores == {"f1": 0.0, "em": 0.0, "contains": 0.0, "logprob": baseline[0].scores["logprob"]}
    assert outcomes[0][0].error is None and outcomes[0][0].result.steps > 0
    assert len(outcomes[1][0].result.answers) == len(contexts[1]["questions"])
    engine, tok = policy.rollout.engine, policy.tokenizer
    for context, before, row in zip(contexts, baseline, outcomes):  # logprob: the mean over the questions
        questions, golds = policy.rollout.question_prompts(context), [q["answers"][0] for q in context["questions"]]
        expected = engine.logprobs(policy.rollout.frozen_copy(), tok, questions, golds)
        assert before.scores["logprob"] == pytest.approx(sum(expected) / len(expected), abs=1e-3)
        assert before.scores["logprob"] < 0
        assert row[0].scores["logprob"] == pytest.approx(sum(row[0].result.logprobs) / len(questions))
        assert row[0].scores["logprob"] != before.scores["logprob"]  # the update moved it


def test_the_scoring_copy_does_not_outlive_the_scoring(policy, monkeypatch):
    """The frozen copy the inner updates train on is freed once the rewards are read: the engine does not
    keep it (and its adapters) alive into the M-step."""
    copies, make = [], policy.rollout.frozen_copy
    monkeypatch.setattr(policy.rollout, "frozen_copy", lambda: copies.append(make()) or copies[-1])
    policy.rollout.score_updates(fictional_passages(1, seed=2), [["A long enough line of text."]], seed=0)
    refs = [weakref.ref(c) for c in copies]
    copies.clear()
    gc.collect()
    assert refs and all(ref() is None for ref in refs)


def test_an_estep_samples_from_the_copy_it_scores_on(policy, monkeypatch):
    """``sample(for_scoring=True)`` draws the self-edits from the frozen copy the inner updates then
    train on (one copy of the policy per E-step, not two), with the same self-edits as from the policy;
    a copy drawn at older weights is not used."""
    import seal_lightning.rollout as rollout_module

    rollout, contexts = policy.rollout, fictional_passages(2, seed=3)
    made, scored = [], []
    make = rollout_module.frozen_copy
    monkeypatch.setattr(rollout_module, "frozen_copy", lambda *a: made.append(make(*a)) or made[-1])
    run = rollout._run_engine
    monkeypatch.setattr(rollout, "_run_engine", lambda base, *a, **k: scored.append(base) or run(base, *a, **k))
    _, plain = rollout.sample(contexts, 2, seed=4)
    assert made == []  # without for_scoring, sampling makes no frozen copy
    _, shared = rollout.sample(contexts, 2, seed=4, for_scoring=True)
    assert shared == plain
    rollout.score_updates(contexts, shared, seed=0)
    assert len(made) == 1 and scored[0] is made[0]
    rollout.sample(contexts, 2, seed=4, for_scoring=True)
    rollout.weights_version += 1  # an optimiser step in between
    rollout.score_updates(contexts, shared, seed=0)
    assert len(made) == 3 and scored[1] is made[2]
    rollout.weights_version -= 1
    with torch.inference_mode():  # as in validation and test: the shared copy must still train
        _, edits = rollout.sample(contexts, 1, seed=4, for_scoring=True)
        _, outcomes = rollout.score_updates(contexts, edits, seed=0)
    assert len(made) == 4 and scored[2] is made[3] and all(o.result.steps > 0 for row in outcomes for o in row)


def test_scores_against_the_context_alone_are_one_more_inner_update(policy, monkeypatch):
    """``over_context``'s baseline is the update on the passage alone, as if scored on its own; the
    pre-update model is not scored at all."""
    from seal_lightning.outer.rewards import REWARDS

    contexts = fictional_passages(2, seed=2)
    edits = [["A long enough line of text.", "x"], ["Another long enough line."]]
    before, plain = policy.rollout.score_updates(contexts, edits, seed=5)
    with monkeypatch.context() as m:
        m.setattr(policy.rollout, "answer_with", lambda *a, **k: pytest.fail("the pre-update model was answered"))
        alone, outcomes = policy.rollout.score_updates(contexts, edits, seed=5, against="context")
    _, passage = policy.rollout.score_updates(contexts, [[None], [None]], seed=5)
    for ci in range(2):
        assert alone[ci].result.steps > 0 and alone[ci].scores["logprob"] != before[ci].scores["logprob"]
        assert alone[ci].scores["logprob"] == pytest.approx(passage[ci][0].scores["logprob"], rel=1e-4)
        # the self-edits' own updates are those of the plain scoring (seeded by context and text)
        assert [o.scores["logprob"] for o in outcomes[ci] if not o.error] == pytest.approx(
            [o.scores["logprob"] for o in plain[ci] if not o.error], rel=1e-4
        )  # rel: other batch shapes in the batched engine move the sums in the last digits
    r = REWARDS["over_context"](alone[0], outcomes[0][0], "logprob")
    assert r == pytest.approx(outcomes[0][0].scores["logprob"] - passage[0][0].scores["logprob"], abs=2e-3)
    assert outcomes[0][1].error.startswith("self-edit has no line")
    assert outcomes[0][1].scores["logprob"] == alone[0].scores["logprob"]  # a failed self-edit's reward: 0
    long = {
        "id": "long",
        "title": "Oskel",
        "context": "The Oskel is wide. " * 400,
        "questions": [{"question": "Wide?", "answers": ["yes"]}],
    }
    failed, rows = policy.rollout.score_updates([long], [["A long enough line of text."]], seed=5, against="context")
    assert failed[0].error.startswith("self-edit prompt has ") and rows[0][0].error == failed[0].error


def test_logprob_reward_is_the_gain_in_gold_answer_likelihood(policy):
    from seal_lightning.outer.rewards import REWARDS
    from seal_lightning.rollout import Outcome
    from seal_lightning.tasks.knowledge import KnowledgeTask

    assert KnowledgeTask(metric="logprob").metric == "logprob"
    with pytest.raises(ValueError, match="task.metric: 'nll' is not one of f1, em, contains, logprob"):
        KnowledgeTask(metric="nll")
    before, after = Outcome({"f1": 0.0, "logprob": -4.0}), Outcome({"f1": 0.0, "logprob": -2.5})
    assert REWARDS["gain"](before, after, "logprob") == 1.5
    assert REWARDS["gain"](before, Outcome(after.scores, error="bad"), "logprob") == 0.0


def test_derive_seed_is_stable():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert derive_seed("a") == 1838161669  # independent of PYTHONHASHSEED


def test_chat_template_wraps_prompts(policy):
    assert "<|im_start|>user\nhello" in policy.rollout.format_prompt("hello")


def test_prompt_too_long_for_the_model_is_not_sampled_and_scores_zero_with_reason(policy):
    long = {
        "id": "long",
        "title": "Oskel",
        "context": "The Oskel is wide. " * 400,
        "questions": [{"question": "Wide?", "answers": ["yes"]}],
    }
    short = fictional_passages(1)[0]
    _, edits = policy.rollout.sample([long, short], 2, seed=0)
    assert edits[0] == ["", ""] and len(edits[1]) == 2
    baseline, _ = policy.rollout.score_updates([long], [[None]], seed=0)
    assert baseline[0].error.startswith("self-edit prompt has ") and "context of 1024" in baseline[0].error


def test_continued_pretraining_is_one_update_on_all_contexts(policy):
    from seal_lightning.evaluation.cpt import continued_pretraining

    contexts = fictional_passages(3)
    jobs = []
    real = policy.rollout.run_inner
    policy.rollout.run_inner = lambda js: (jobs.extend(js), real(js))[1]  # record what trains, then train for real
    try:
        rows = continued_pretraining(policy.rollout, contexts, seed=0)
    finally:
        del policy.rollout.run_inner
    passage_job = jobs[0]
    assert len(jobs) == 2 and len(passage_job.questions) == sum(len(c["questions"]) for c in contexts)
    lines = [line for _, line in passage_job.sequences]
    assert all(any(c["title"] in line for line in lines) for c in contexts)  # every passage in the one update
    assert [(r["context_id"], r["condition"]) for r in rows] == [
        (c["id"], cond) for cond in ("cpt_passage", "cpt_self_edit") for c in contexts
    ]
    assert all(0.0 <= r["f1"] <= 1.0 for r in rows)


def test_repeats_average_each_self_edits_scores_over_inner_seeds(policy, monkeypatch):
    import dataclasses

    contexts = fictional_passages(1, seed=3)
    edit = "The town was founded long ago.\nIts mayor was elected in spring."
    calls = []
    real = policy.rollout.engine.run

    def run(base, tokenizer, jobs, **hooks):  # record every inner job and its result
        results = real(base, tokenizer, jobs, **hooks)
        calls.append((jobs, results))
        return results

    monkeypatch.setattr(policy.rollout.engine, "run", run)
    _, once = policy.rollout.score_updates(contexts, [[edit]], seed=5)
    monkeypatch.setattr(policy.rollout, "inner", dataclasses.replace(policy.rollout.inner, repeats=3))
    _, thrice = policy.rollout.score_updates(contexts, [[edit]], seed=5)
    (single,), _ = calls[0]
    jobs, results = calls[1]
    assert len(jobs) == 3 and jobs[0].seed == single.seed and len({j.seed for j in jobs}) == 3
    graded = [
        {**policy.rollout.task.grade(contexts[0], r.answers), "logprob": sum(r.logprobs) / len(r.logprobs)}
        for r in results
    ]
    assert len({g["logprob"] for g in graded}) == 3  # each inner seed gives its own score
    assert thrice[0][0].scores == {k: sum(g[k] for g in graded) / 3 for k in graded[0]}
    # repeat 0 is the single run (its logprob packed beside other adapters' rows: rounding only)
    assert once[0][0].scores == pytest.approx(graded[0], abs=1e-3)
    assert thrice[0][0].result.seconds == pytest.approx(sum(r.seconds for r in results))
