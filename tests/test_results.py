"""Paired statistics of the result tables, on constructed rows whose answer is known."""

import json
import random

import pytest

from seal_lightning import EvalConfig, SEALPolicy
from seal_lightning.evaluation import rounds
from seal_lightning.evaluation.results import format_table, metric_names, paired, summarize


def _rows(n=24, shift=0.03, seed=0):
    """Contexts of very different difficulty; self_edit beats base_self_edit on each by ~``shift``."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        hard = rng.random()
        for condition, score in (
            ("no_update", hard * 0.5),
            ("passage", hard + 0.01),
            ("base_self_edit", hard),
            ("self_edit", hard + shift + rng.uniform(-0.01, 0.01)),
        ):
            rows.append({"context_id": f"c{i}", "condition": condition, "f1": score, "texts": ["x"]})
    return rows


def test_paired_difference_is_clear_where_unpaired_error_bars_overlap():
    summary = summarize(_rows())
    trained, base = summary["self_edit"], summary["base_self_edit"]
    assert abs(trained["f1"] - base["f1"]) < trained["f1_se"] + base["f1_se"]  # the unpaired bars overlap
    assert trained["f1_delta"] == pytest.approx(trained["f1"] - base["f1"])
    assert trained["f1_delta"] > 5 * trained["f1_delta_se"] and trained["f1_delta_ci95"][0] > 0
    assert trained["reference"] == "base_self_edit" and "f1_delta" not in base
    assert trained["f1_vs_passage"] == pytest.approx(trained["f1"] - summary["passage"]["f1"])
    assert metric_names(trained) == ["f1"]  # "texts" and the derived keys are not metrics
    table = format_table(summary, "test")
    assert "Δf1" in table.splitlines()[1] and "Δ: paired difference to base_self_edit" in table.splitlines()[-1]
    assert "+0.0" in next(line for line in table.splitlines() if line.startswith("self_edit"))


def test_a_metric_the_reference_lacks_gets_no_paired_difference():
    rows = [
        {"context_id": f"c{i}", "condition": c, "f1": 0.1 * i, **({"logprob": -2.0} if c != "cpt_passage" else {})}
        for i in range(3)
        for c in ("base_self_edit", "cpt_passage", "self_edit")
    ]
    summary = summarize(rows, reference="cpt_passage")  # e.g. continued pretraining: no teacher-forced score
    assert summary["self_edit"]["f1_delta"] == 0.0 and "logprob_delta" not in summary["self_edit"]
    assert summary["self_edit"]["logprob"] == -2.0
    lines = format_table(summary, "test").splitlines()
    assert "logprob" in lines[1] and len({len(line) for line in lines[1:-1]}) == 1  # a blank cell where it lacks


def test_paired_by_hand():
    result = paired([0.3, 0.5, 0.9], [0.1, 0.4, 0.5])
    assert result["mean"] == pytest.approx(0.7 / 3)
    diffs = [0.2, 0.1, 0.4]
    se = (sum((d - 0.7 / 3) ** 2 for d in diffs) / 2 / 3) ** 0.5
    assert result["se"] == pytest.approx(se) and result["n"] == 3
    low, high = result["ci95"]
    assert 0.1 - 1e-9 <= low <= result["mean"] <= high <= 0.4 + 1e-9  # a bootstrap mean lies within the differences
    assert paired([0.3, 0.5, 0.9], [0.1, 0.4, 0.5]) == result  # seeded
    with pytest.raises(ValueError, match="equally long"):
        paired([1.0], [1.0, 2.0])


def test_passage_as_reference():
    summary = summarize(_rows(), reference="passage")
    assert summary["self_edit"]["reference"] == "passage" and "f1_vs_passage" not in summary["self_edit"]
    assert summary["self_edit"]["f1_delta"] == pytest.approx(summary["self_edit"]["f1"] - summary["passage"]["f1"])


def test_rounds_pair_each_round_with_round_zeros_reference(tmp_path):
    rows = _rows(n=8)
    round0 = [r for r in rows if r["condition"] != "self_edit"]
    round1 = [r for r in rows if r["condition"] == "self_edit"]
    for r, picked in ((0, round0), (1, round1)):
        record = {
            "global_step": 2 * r,
            "summary": summarize(picked),
            "reference": "base_self_edit",
            "labels": {},
            "per_context": picked,
        }
        rounds.save_round(tmp_path, r - 1, record)
    merged = rounds.merge(tmp_path)
    assert list(merged["summary"]) == ["no_update", "passage", "base_self_edit", "self_edit (round 1)"]
    assert merged["reference"] == "base_self_edit" and merged["global_steps"] == {0: 0, 1: 2}
    expected = summarize(rows)["self_edit"]
    assert merged["summary"]["self_edit (round 1)"]["f1_delta"] == pytest.approx(expected["f1_delta"])
    assert json.loads(rounds.write_rounds(tmp_path, merged).read_text())["summary"] == merged["summary"]


def test_unknown_reference_is_named():
    with pytest.raises(ValueError, match="model.eval.reference: unknown"):
        SEALPolicy(model="tiny-random-llama", eval=EvalConfig(reference="best"))


def _reliability():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reward_reliability.py"
    spec = importlib.util.spec_from_file_location("reward_reliability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reliability


def test_reward_reliability_separates_self_edits_from_inner_noise():
    reliability, rng = _reliability(), random.Random(0)
    signal = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(30)]  # 30 passages x K=4
    exact = reliability([signal] * 4, repeats=2)  # every run measures the same rewards
    assert exact["test_retest"] == pytest.approx(1) and exact["between_share"] == pytest.approx(1)
    assert exact["best_of_k_agreement"] == 1 and exact["chance_agreement"] == 0.25
    noise_only = [[[rng.gauss(0, 1) for _ in range(4)] for _ in range(30)] for _ in range(4)]
    pure = reliability(noise_only, repeats=1)
    assert abs(pure["test_retest"]) < 0.3 and pure["between_share"] < 0.3
    mixed = [[[s + rng.gauss(0, 1) for s in row] for row in signal] for _ in range(4)]
    once, twice = reliability(mixed, repeats=1), reliability(mixed, repeats=2)
    assert 0.3 < once["between_share"] < twice["between_share"] < 0.9  # averaging repeats removes noise


def test_table_shows_a_tasks_labels_for_conditions_and_reference():
    labels = {"no_update": "icl", "base_self_edit": "self_edit_before_rl", "self_edit": "seal"}
    table = format_table(summarize(_rows(n=4)), "test", labels)
    assert [line.split()[0] for line in table.splitlines()[3:7]] == ["icl", "passage", "self_edit_before_rl", "seal"]
    assert table.splitlines()[-1].startswith("Δ: paired difference to self_edit_before_rl ")
