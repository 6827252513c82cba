"""The outer loop's algorithms beyond ReST-EM: group-relative advantages (GRPO/RLOO) and DPO, on the
tiny model: the formulas by hand, the direction of one step, the reference, and the CLI's ledger."""

import json
import math
from dataclasses import replace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, fit_tiny

from seal_lightning import PolicyLoRA, SEALPolicy
from seal_lightning.cli import main
from seal_lightning.lm.models import TINY, load_model
from seal_lightning.lm.sft import tokenize_pair
from seal_lightning.outer.mstep import (
    advantage_loss,
    micro_batches,
    sft_rows,
    step_loss,
    token_logps,
    with_old_logps,
)
from seal_lightning.outer.objective import (
    AdvantageExample as Adv,
)
from seal_lightning.outer.objective import (
    OuterConfig,
    SFTExample,
    examples,
)
from seal_lightning.outer.objective import (
    PreferenceExample as Pref,
)
from seal_lightning.outer.rewards import group_advantages, preference_pair

TOKENIZER = load_model(TINY)[1]
PROMPT, TEXT, OTHER = "Read the passage about Velmora and list implications.", " Velmora exports copper.", " No."


def _policy(outer: OuterConfig, lora: PolicyLoRA | None = PolicyLoRA(r=4, alpha=8)) -> SEALPolicy:
    torch.manual_seed(0)
    policy = SEALPolicy(model=TINY, lora=lora, outer=replace(outer, sft_max_length=256))
    policy.configure_model()
    policy.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    return policy


def _logp(model, completion: str) -> float:
    """Summed log-probability of ``completion`` (and EOS) after PROMPT, from full logits."""
    ids, labels = tokenize_pair(TOKENIZER, PROMPT, completion, 256, eos=True)
    n = labels.count(-100)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return -F.cross_entropy(logits[n - 1 : -1], torch.tensor(ids[n:]), reduction="sum").item()


def _sgd_step(policy: SEALPolicy, step: list, lr: float = 0.5) -> None:
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(policy._step_loss(step), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g


def test_group_advantages_follow_trls_grpo_and_rloo_definitions():
    rewards, none = [1.0, 0.0, 0.5, 0.5], [False] * 4
    std = math.sqrt((0.25 + 0.25) / 3)  # unbiased, as torch.std
    assert group_advantages(rewards, none) == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0, 0])
    assert group_advantages(rewards, none, scale=False) == pytest.approx([0.5, -0.5, 0, 0])
    assert group_advantages(rewards, none, "leave_one_out", scale=False) == pytest.approx([2 / 3, -2 / 3, 0, 0])
    assert group_advantages(rewards, none, clip=1.0) == pytest.approx([1.0, -1.0, 0, 0])
    assert group_advantages([0.2] * 4, none) == [0.0] * 4  # all equal: nothing to learn
    # a failed self-edit (placeholder reward 0) is left out of its group's mean and std
    assert group_advantages([1.0, 0.0, 0.0], [False, False, True], scale=False) == pytest.approx([0.5, -0.5, 0.0])
    assert group_advantages([1.0, 0.0], [False, True]) == [0.0, 0.0]


def test_preference_pair_is_the_first_best_and_last_worst_scored_self_edit():
    assert preference_pair([0.1, 0.3, 0.3, -0.2, -0.2], [False] * 5) == (1, 4)
    assert preference_pair([0.9, 0.3, -0.2], [True, False, False]) == (1, 2)
    assert preference_pair([0.3, 0.3], [False, False]) is None and preference_pair([0.3, 0.1], [False, True]) is None


def test_examples_and_ledger_notes_per_algorithm():
    texts, rewards, none = ["a", "b", "c"], [0.2, -0.1, 0.2], [False] * 3
    picked, notes = examples(OuterConfig(), PROMPT, texts, rewards, none, [True, False, False])
    assert picked == [SFTExample(PROMPT, "a")] and [n["kept"] for n in notes] == [True, False, False]
    picked, notes = examples(OuterConfig("advantage", scale_rewards=False), PROMPT, texts, rewards, none, [True] * 3)
    assert [e.advantage for e in picked] == pytest.approx([0.1, -0.2, 0.1]) and notes[1]["advantage"] == pytest.approx(
        -0.2
    )
    picked, notes = examples(OuterConfig("advantage"), PROMPT, texts, [0.2] * 3, none, [True] * 3)
    assert picked == [] and all(n == {"kept": False, "advantage": 0.0} for n in notes)
    picked, notes = examples(OuterConfig("dpo"), PROMPT, texts, rewards, none, [True] * 3)
    assert picked == [Pref(PROMPT, "a", "b")] and [n.get("preference") for n in notes] == ["chosen", "rejected", None]
    with pytest.raises(ValueError, match="model.outer.algorithm: 'ppo'"):
        OuterConfig("ppo")


@pytest.mark.parametrize("normalize", ["sequence", "token"])
def test_a_positive_advantage_raises_the_self_edits_logprob_and_a_negative_one_lowers_it(normalize):
    for sign in (1.0, -1.0):
        policy = _policy(OuterConfig("advantage", normalize=normalize))
        before = _logp(policy.model, TEXT)
        _sgd_step(policy, [Adv(PROMPT, TEXT, sign)])
        after = _logp(policy.model, TEXT)
        assert (after - before) * sign > 0.01, (sign, before, after)


def test_advantage_loss_normalisations_and_zero_advantages_by_hand():
    policy = _policy(OuterConfig("advantage"))
    rows = sft_rows(policy.tokenizer, [(PROMPT, TEXT), (PROMPT, OTHER)], 256)
    logps, index = token_logps(policy.model, policy.tokenizer.pad_token_id, rows)
    a = torch.tensor([0.5, -1.0])
    n = torch.bincount(index).float()
    sums = torch.zeros(2).index_add(0, index, logps.detach())
    assert advantage_loss(logps, index, a, "sequence").item() == pytest.approx(-(a * sums / n).sum().item(), rel=1e-5)
    assert advantage_loss(logps, index, a, "token").item() == pytest.approx(-(a * sums).sum().item(), rel=1e-5)
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(advantage_loss(logps, index, torch.zeros(2), "sequence"), params, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)  # an all-equal group teaches nothing
    # the KL penalty (TRL's k3) is 0 where the policy is the reference, positive once it moved
    ref = logps.detach() - 0.3
    kl = advantage_loss(logps, index, torch.zeros(2), "token", ref, kl_beta=0.1)
    assert kl.item() == pytest.approx(0.1 * len(logps) * (math.exp(-0.3) + 0.3 - 1), rel=1e-4)


def test_dpo_loss_equals_a_hand_computation_against_the_starting_policy():
    policy = _policy(OuterConfig("dpo", dpo_beta=0.5))
    step = [Pref(PROMPT, TEXT, OTHER)]
    assert policy._step_loss(step).item() == pytest.approx(math.log(2), rel=1e-5)  # policy == reference at start
    ref_chosen, ref_rejected = _logp(policy.model.get_base_model(), TEXT), _logp(policy.model.get_base_model(), OTHER)
    with policy.model.disable_adapter():
        assert _logp(policy.model, TEXT) == pytest.approx(ref_chosen)
    _sgd_step(policy, step)
    margin = (_logp(policy.model, TEXT) - ref_chosen) - (_logp(policy.model, OTHER) - ref_rejected)
    assert margin > 0  # one step prefers the chosen self-edit over the rejected one, relative to the start
    with torch.no_grad():
        assert policy._step_loss(step).item() == pytest.approx(
            -F.logsigmoid(torch.tensor(0.5 * margin)).item(), rel=1e-4
        )


def test_a_fully_finetuned_policy_keeps_a_frozen_reference_out_of_its_checkpoint():
    policy = _policy(OuterConfig("dpo"), lora=None)
    start = _logp(policy.reference, TEXT)
    _sgd_step(policy, [Pref(PROMPT, TEXT, OTHER)], lr=0.05)
    assert _logp(policy.reference, TEXT) == start != _logp(policy.model, TEXT)
    assert not any(p.requires_grad for p in policy.reference.parameters())
    checkpoint = {"state_dict": policy.state_dict()}
    policy.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("reference.") for k in checkpoint["state_dict"])
    resumed = _policy(OuterConfig("dpo"), lora=None)  # a resumed run rebuilds the same start from model.model
    resumed.load_state_dict(checkpoint["state_dict"], strict=False)
    assert _logp(resumed.reference, TEXT) == start and _logp(resumed.model, TEXT) == pytest.approx(
        _logp(policy.model, TEXT)
    )


def _ledger(run):
    return [json.loads(line) for line in (run / "self_edits.jsonl").read_text().splitlines()]


LOGPROB = ["--model.task", "seal_lightning.tasks.knowledge.KnowledgeTask", "--model.task.metric", "logprob"]


def test_advantage_and_dpo_through_the_cli_record_advantages_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ["--config", str(CONFIGS / "tiny.yaml"), *LOGPROB]
    main(
        [
            "fit",
            *config,
            "--model.outer.algorithm",
            "advantage",
            "--model.outer.kl_beta",
            "0.05",
            "--trainer.default_root_dir",
            "advantage",
        ]
    )
    records = _ledger(tmp_path / "advantage")
    assert len(records) == 4 * 3 and all("advantage" in r and r["kept"] == (r["advantage"] != 0) for r in records)
    for cid in {r["context_id"] for r in records}:  # GRPO advantages of a group sum to zero
        assert sum(r["advantage"] for r in records if r["context_id"] == cid) == pytest.approx(0, abs=1e-6)
    assert any(r["kept"] for r in records)
    metrics = (next((tmp_path / "advantage").glob("logs/version_0/metrics.csv"))).read_text()
    assert "train/pg_loss" in metrics.splitlines()[0]

    dpo = [*config, "--model.outer.algorithm", "dpo", "--trainer.default_root_dir", "dpo"]
    main(["fit", *dpo])
    first = _ledger(tmp_path / "dpo")
    main(["fit", *dpo, "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    records = _ledger(tmp_path / "dpo")
    assert records[: len(first)] == first and len(records) == 2 * 4 * 3 and {r["epoch"] for r in records} == {0, 1}
    for key in {(r["epoch"], r["context_id"]) for r in records}:
        prefs = sorted(r.get("preference", "") for r in records if (r["epoch"], r["context_id"]) == key)
        assert prefs in (["", "", ""], ["", "chosen", "rejected"])
    with pytest.raises(ValueError, match="model.outer.k must be >= 2"):
        main(["fit", *dpo, "--model.outer.k", "1", "--trainer.default_root_dir", "k1"])


@pytest.mark.parametrize(
    "outer",
    [
        OuterConfig(),
        OuterConfig("advantage", kl_beta=0.1),
        OuterConfig("advantage", normalize="token"),
        OuterConfig("dpo"),
    ],
)
def test_two_ranks_shares_and_micro_batches_of_a_step_give_the_one_process_gradient(outer):
    """DDP averages the ranks' gradients: the two shares of a step (one rank gets 2 examples, the
    other 1) average to the gradient of the whole step on one process, for every algorithm; so do
    micro-batches of one example (``outer.sft_micro_batch_size``), on one process or two."""
    policy = _policy(outer)
    _sgd_step(policy, [Adv(PROMPT, TEXT, 1.0) if outer.algorithm != "dpo" else Pref(PROMPT, TEXT, OTHER)], lr=0.5)
    if outer.algorithm == "dpo":
        step = [Pref(PROMPT, TEXT, OTHER), Pref(PROMPT, OTHER, TEXT), Pref(PROMPT, TEXT + " Twice.", OTHER)]
    else:
        step = [Adv(PROMPT, TEXT, 0.7), Adv(PROMPT, OTHER, -1.2), Adv(PROMPT, TEXT + " Twice.", 0.4)]
    params = [p for p in policy.parameters() if p.requires_grad]
    config, tok = policy.outer, policy.tokenizer

    def grads(world, rank, size=None):
        parts = micro_batches(len(step), world, rank, size)
        loss = sum(step_loss(policy.model, tok, config, step, 256, world, mine, policy.reference) for mine in parts)
        return torch.autograd.grad(loss, params)

    whole = grads(1, 0)
    for size in (None, 1):
        shares = [grads(2, rank, size) for rank in (0, 1)]
        for g, a, b in zip(whole, *shares):
            torch.testing.assert_close((a + b) / 2, g, rtol=1e-4, atol=1e-5 * g.abs().max().item())  # padding differs
    for g, m in zip(whole, grads(1, 0, 1)):
        torch.testing.assert_close(m, g, rtol=1e-4, atol=1e-5 * g.abs().max().item())
    assert any(g.abs().max() > 0 for g in whole)


def test_the_clipped_surrogate_stops_a_token_once_its_ratio_left_the_trust_region():
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    rows, a = torch.tensor([0, 0, 1]), torch.tensor([1.0, -1.0])
    (plain,) = torch.autograd.grad(advantage_loss(logps, rows, a, "token"), logps)
    # at the M-step's start (ratio 1) the surrogate has the plain gradient -A
    (start,) = torch.autograd.grad(
        advantage_loss(logps, rows, a, "token", old_logps=logps.detach(), epsilon=0.2), logps
    )
    torch.testing.assert_close(start, plain)
    # ratio e^0.5 > 1.2: a positive advantage is clipped (no gradient), a negative one still pulls down
    old = logps.detach() - 0.5
    loss = advantage_loss(logps, rows, a, "token", old_logps=old, epsilon=0.2)
    (moved,) = torch.autograd.grad(loss, logps)
    r = math.exp(0.5)
    assert loss.item() == pytest.approx(-(1.2 * 1.0) * 2 + r * 1.0)
    torch.testing.assert_close(moved, torch.tensor([0.0, 0.0, r]))


def test_old_logps_are_the_policys_at_the_m_steps_start_and_only_for_clipped_advantage():
    policy = _policy(OuterConfig("advantage"))
    step = [Adv(PROMPT, TEXT, 0.5), Adv(PROMPT, OTHER, -0.5)]
    withold = with_old_logps(policy.model, policy.tokenizer, policy.outer, step, 256, batch_size=1)
    logps, index = token_logps(
        policy.model, policy.tokenizer.pad_token_id, sft_rows(policy.tokenizer, [(e.prompt, e.text) for e in step], 256)
    )
    for i, example in enumerate(withold):
        assert replace(example, old_logps=None) == step[i]
        torch.testing.assert_close(
            example.old_logps, logps[index == i].detach()
        )  # one row a batch here: padding differs
    assert _logp(policy.model, TEXT) == pytest.approx(withold[0].old_logps.sum().item(), rel=1e-5)
    params = [p for p in policy.parameters() if p.requires_grad]
    clipped = torch.autograd.grad(policy._step_loss(withold), params)
    plain = torch.autograd.grad(policy._step_loss(step), params)
    for c, p in zip(clipped, plain):  # ratio 1 at the start: the same gradient as the plain loss
        torch.testing.assert_close(c, p)
    for config in (OuterConfig(), OuterConfig("dpo"), OuterConfig("advantage", clip_epsilon=None)):
        assert with_old_logps(policy.model, policy.tokenizer, config, step, 256, 4) is step
    with pytest.raises(ValueError, match="clip_epsilon must be in"):
        OuterConfig("advantage", clip_epsilon=1.5)


def test_micro_batches_give_every_rank_as_many_and_cover_the_step_once():
    assert micro_batches(4, 1, 0, None) == [[0, 1, 2, 3]]
    assert micro_batches(5, 2, 0, 2) == [[0, 2], [4]]
    assert micro_batches(5, 2, 1, 2) == [[1, 3], []]  # as many collective calls as rank 0
    assert micro_batches(1, 2, 1, None) == [[]]
    ranks = [micro_batches(7, 3, r, 1) for r in range(3)]
    assert {len(parts) for parts in ranks} == {3}
    assert sorted(i for parts in ranks for part in parts for i in part) == list(range(7))


def test_micro_batches_train_the_policy_as_the_whole_step_does(tmp_path):
    """``seal fit`` with ``outer.sft_micro_batch_size 1`` (two examples a step, one sequence per
    forward/backward) ends with the weights of the whole-step run."""
    runs = {}
    for name, extra in (("whole", []), ("micro", ["--model.outer.sft_micro_batch_size", "1"])):
        (tmp_path / name).mkdir()
        ckpt = fit_tiny(tmp_path / name, "--model.outer.sft_batch_size", "2", *extra)
        runs[name] = torch.load(ckpt, weights_only=True)["state_dict"]
    lora_b = [k for k in runs["whole"] if "lora_B" in k]
    assert lora_b and any(runs["whole"][k].abs().max() > 0 for k in lora_b)  # the M-step moved the policy
    for key, value in runs["whole"].items():
        torch.testing.assert_close(runs["micro"][key], value, rtol=1e-4, atol=1e-6)


def test_a_micro_batch_counts_sequences_and_never_splits_a_dpo_pair():
    assert OuterConfig().micro_examples is None
    assert OuterConfig(sft_micro_batch_size=4).micro_examples == 4
    assert OuterConfig("dpo", sft_micro_batch_size=4).micro_examples == 2
    assert OuterConfig("dpo", sft_micro_batch_size=1).micro_examples == 1
    with pytest.raises(ValueError, match="sft_micro_batch_size"):
        OuterConfig(sft_micro_batch_size=0)
