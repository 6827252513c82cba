"""`seal compare`: runs that differ in one setting, paired on the same validation contexts."""

import json

import pytest
from conftest import CONFIGS

from seal_lightning.cli import main
from seal_lightning.cli.compare import compare


def _round(directory, r, rows):
    out = directory / "evaluations"
    out.mkdir(parents=True, exist_ok=True)
    per_context = [{"context_id": cid, "condition": cond, "f1": f1, "contains": c} for cid, cond, f1, c in rows]
    record = {"global_step": r, "labels": {}, "reference": "base_self_edit", "per_context": per_context}
    (out / f"val_round{r}.json").write_text(json.dumps(record))


ZERO = [
    (cid, cond, f1, 0.0)
    for cid, base in (("a", 0.1), ("b", 0.3), ("c", 0.2))
    for cond, f1 in (("passage", base + 0.05), ("base_self_edit", base))
]


def test_runs_share_round_zero_and_pair_their_last_rounds_by_hand(tmp_path):
    first, second = tmp_path / "rest_em", tmp_path / "advantage"
    _round(first, 0, ZERO)
    for r, gain in ((1, 0.01), (2, 0.02)):
        _round(first, r, [(cid, "self_edit", base + gain, 0.0) for cid, base in (("a", 0.1), ("b", 0.3), ("c", 0.2))])
    _round(second, 1, [(cid, "self_edit", f1, 0.0) for cid, f1 in (("a", 0.2), ("b", 0.3), ("c", 0.1))])
    (second / "ledger_summary.json").write_text(json.dumps({"1": {"reward_mean": 0.5, "reward_se": 0.1}}))
    result = compare({"rest_em": first, "advantage": second})
    summary = result["summary"]
    assert list(summary) == [
        "passage",
        "base_self_edit",
        "rest_em: self_edit (round 1)",
        "rest_em: self_edit (round 2)",
        "advantage: self_edit (round 1)",
    ]
    assert summary["rest_em: self_edit (round 2)"]["f1_delta"] == pytest.approx(0.02)
    assert summary["rest_em: self_edit (round 2)"]["f1_delta_se"] == pytest.approx(0, abs=1e-9)
    assert summary["advantage: self_edit (round 1)"]["f1_vs_passage"] == pytest.approx((0.05 - 0.05 - 0.15) / 3)
    # last rounds paired context by context: (0.2-0.12, 0.3-0.32, 0.1-0.22) / 3
    versus = result["versus"]["advantage - rest_em"]["f1"]
    assert versus["mean"] == pytest.approx((0.08 - 0.02 - 0.12) / 3) and versus["n"] == 3
    assert (
        result["training_reward"]["advantage"]["1"]["reward_mean"] == 0.5 and result["training_reward"]["rest_em"] == {}
    )
    # --max-round 1: both runs meet at round 1: (0.2-0.11, 0.3-0.31, 0.1-0.21) / 3
    (first / "ledger_summary.json").write_text(
        json.dumps({str(r): {"reward_mean": r, "reward_se": 0.1} for r in (1, 2)})
    )
    at1 = compare({"rest_em": first, "advantage": second}, max_round=1)
    assert "rest_em: self_edit (round 2)" not in at1["summary"] and list(at1["training_reward"]["rest_em"]) == ["1"]
    assert at1["versus"]["advantage - rest_em"]["f1"]["mean"] == pytest.approx((0.09 - 0.01 - 0.11) / 3)

    _round(second, 0, ZERO[:4])  # a round 0 on other contexts cannot share the first run's
    with pytest.raises(ValueError, match="advantage/evaluations/val_round0.json: other validation contexts"):
        compare({"rest_em": first, "advantage": second})
    with pytest.raises(ValueError, match="no run has val_round0.json"):
        compare({"b": _only_round1(tmp_path)})
    with pytest.raises(FileNotFoundError, match="val_round\\*.json: none"):
        compare({"empty": tmp_path / "empty"})


def test_each_round0_pairs_settings_that_change_round_zero(tmp_path):
    """Inner settings change round 0 itself: each run's round 0 becomes rows of its own, paired with
    the first run's; a `seal validate` results.json counts as a run's round 0."""
    baseline = tmp_path / "epochs4"
    _round(baseline, 0, ZERO)
    longer = tmp_path / "results.json"  # passage +0.02 on every context, base_self_edit -0.01 on "a" only
    rows = [
        (cid, cond, f1 + (0.02 if cond == "passage" else -0.01 if cid == "a" else 0.0), 0.0)
        for cid, cond, f1, _ in ZERO
    ]
    _round(tmp_path / "tmp", 0, rows)
    (tmp_path / "tmp/evaluations/val_round0.json").rename(longer)
    shared = compare({"epochs4": baseline, "epochs8": longer})
    assert list(shared["summary"]) == ["passage", "base_self_edit"]  # without the flag: one round 0
    summary = compare({"epochs4": baseline, "epochs8": longer}, each_round0=True)["summary"]
    assert list(summary) == ["passage", "base_self_edit", "epochs8: passage", "epochs8: base_self_edit"]
    assert summary["epochs8: passage"]["f1_vs_passage"] == pytest.approx(0.02)
    assert summary["epochs8: passage"]["f1_vs_passage_se"] == pytest.approx(0, abs=1e-9)
    assert summary["epochs8: base_self_edit"]["f1_delta"] == pytest.approx(-0.01 / 3)
    against = compare({"epochs4": baseline, "epochs8": longer}, each_round0=True, reference="epochs8: base_self_edit")
    assert against["reference"] == "epochs8: base_self_edit"
    assert against["summary"]["base_self_edit"]["f1_delta"] == pytest.approx(0.01 / 3)
    with pytest.raises(ValueError, match="reference 'epochs9: passage' is no row of the comparison; rows: passage"):
        compare({"epochs4": baseline, "epochs8": longer}, each_round0=True, reference="epochs9: passage")
    (tmp_path / "other.json").write_text(
        json.dumps({"per_context": [{"context_id": "z", "condition": "passage", "f1": 0.0, "contains": 0.0}]})
    )
    with pytest.raises(ValueError, match="other.json: other validation contexts"):
        compare({"epochs4": baseline, "z": tmp_path / "other.json"}, each_round0=True)


def _only_round1(tmp_path):
    run = tmp_path / "only1"
    _round(run, 1, [("a", "self_edit", 0.1, 0.0)])
    return run


def test_compare_two_outer_algorithms_run_through_the_cli(tmp_path, monkeypatch, capsys):
    """rest_em validates round 0; advantage (same seed, so the same round 0) skips it and borrows it."""
    monkeypatch.chdir(tmp_path)
    config = [
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--model.task",
        "seal_lightning.tasks.knowledge.KnowledgeTask",
        "--model.task.metric",
        "logprob",
        "--model.eval.fit_conditions",
        "[self_edit]",
    ]
    main(["fit", *config, "--validate_before_fit", "true", "--trainer.default_root_dir", "rest_em"])
    main(["fit", *config, "--model.outer.algorithm", "advantage", "--trainer.default_root_dir", "advantage"])
    capsys.readouterr()
    main(["compare", "rest_em=rest_em", f"advantage={tmp_path / 'advantage'}", "--out", "compare.json"])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "compare.json").read_text())
    assert (
        "| advantage: self_edit (round 1) |" in out
        and "last round, advantage - rest_em (paired over 2 contexts)" in out
    )
    assert {"no_update", "passage", "base_self_edit", "rest_em: self_edit (round 1)"} <= set(result["summary"])
    own = json.loads((tmp_path / "advantage/evaluations/val_round1.json").read_text())["summary"]["self_edit"]
    assert result["summary"]["advantage: self_edit (round 1)"]["f1"] == pytest.approx(own["f1"])
    # both runs sampled their first batch from the same untrained policy with the same seeds; the
    # second batch comes from policies that the two algorithms' first M-steps made different
    ledgers = [
        [json.loads(line) for line in (tmp_path / d / "self_edits.jsonl").read_text().splitlines()]
        for d in ("rest_em", "advantage")
    ]
    first = [[(r["text"], r["reward"]) for r in ledger if r["global_step"] == 0] for ledger in ledgers]
    assert len(first[0]) == 2 * 3 and first[0] == first[1]
    assert result["training_reward"]["advantage"]["1"]["reward_mean"] == pytest.approx(
        sum(r["reward"] for r in ledgers[1]) / len(ledgers[1])
    )
    with pytest.raises(SystemExit):
        main(["compare", "no-name-here"])
