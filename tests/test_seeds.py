"""`seal seeds`: one config under several seeds, each run paired with its own round 0."""

import json
import math
import statistics

import pytest
from test_compare import _round

from seal_lightning.cli import main
from seal_lightning.cli.seeds import seeds

CONTEXTS = ("a", "b", "c", "d")
PASSAGE = (0.30, 0.20, 0.40, 0.10)


def _run(tmp_path, name, base, gain):
    """A seed whose untrained self-edits score ``base`` per context and whose round-1 self-edits ``base + gain``."""
    run = tmp_path / name
    _round(
        run,
        0,
        [
            row
            for cid, b, p in zip(CONTEXTS, base, PASSAGE)
            for row in ((cid, "passage", p, 1.0), (cid, "base_self_edit", b, 0.0), (cid, "no_update", 0.0, 0.0))
        ],
    )
    _round(run, 1, [(cid, "self_edit", b + g, 0.5) for cid, b, g in zip(CONTEXTS, base, gain)])
    return run


def test_each_seed_is_paired_with_its_own_round_zero_by_hand(tmp_path):
    gains = [(0.10, 0.00, 0.05, 0.05), (0.02, 0.04, 0.00, 0.02), (0.06, 0.06, 0.00, 0.00)]
    bases = [(0.10, 0.10, 0.10, 0.10), (0.00, 0.20, 0.10, 0.00), (0.05, 0.05, 0.30, 0.10)]
    runs = [_run(tmp_path, f"seed{s}", b, g) for s, (b, g) in enumerate(zip(bases, gains))]
    result = seeds(runs)
    assert result["contexts"] == 4 and list(result["rounds"]) == ["0", "1"]
    assert set(result["rounds"]["0"]) == {"passage", "no_update"}  # base_self_edit is the reference itself
    entry = result["rounds"]["1"]["self_edit"]["f1_vs_base_self_edit"]
    seed_means = [sum(g) / 4 for g in gains]  # 0.05, 0.02, 0.03
    assert [p["mean"] for p in entry["per_seed"]] == pytest.approx(seed_means)
    assert entry["mean"] == pytest.approx(statistics.mean(seed_means))
    assert entry["seed_sd"] == pytest.approx(statistics.stdev(seed_means))
    pooled = [sum(g[c] for g in gains) / 3 for c in range(4)]  # per context, averaged over seeds
    mean = sum(pooled) / 4
    assert entry["pooled"]["mean"] == pytest.approx(mean)
    assert entry["pooled"]["se"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in pooled) / 3 / 4))
    assert entry["pooled"]["ci95"][0] <= mean <= entry["pooled"]["ci95"][1]
    # against each seed's own passage row: self_edit - passage, averaged over contexts then seeds
    vs_passage = result["rounds"]["1"]["self_edit"]["f1_vs_passage"]
    expected = [sum(b[c] + g[c] - PASSAGE[c] for c in range(4)) / 4 for b, g in zip(bases, gains)]
    assert [p["mean"] for p in vs_passage["per_seed"]] == pytest.approx(expected)
    assert result["rounds"]["1"]["self_edit"]["contains_vs_passage"]["mean"] == pytest.approx(-0.5)
    assert result["rounds"]["0"]["passage"]["f1_vs_base_self_edit"]["mean"] == pytest.approx(
        statistics.mean(sum(PASSAGE[c] - b[c] for c in range(4)) / 4 for b in bases)
    )


def test_seeds_through_the_cli_and_bad_input(tmp_path, capsys):
    runs = [_run(tmp_path, f"seed{s}", (0.1,) * 4, (0.01 * s,) * 4) for s in range(3)]
    out = tmp_path / "seeds.json"
    main(["seeds", *map(str, runs), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "3 seeds, 4 contexts" in printed and "| self_edit (round 1) | +0.010 ± 0.010; +0.010 ± 0.000" in printed
    assert json.loads(out.read_text())["rounds"]["1"]["self_edit"]["f1_vs_base_self_edit"]["seed_sd"] == pytest.approx(
        0.01
    )
    with pytest.raises(ValueError, match="two runs or more"):
        seeds(runs[:1])
    lonely = tmp_path / "no_round0"
    _round(lonely, 1, [("a", "self_edit", 0.1, 0.0)])
    with pytest.raises(FileNotFoundError, match="no_round0/evaluations/val_round0.json: none"):
        seeds([runs[0], lonely])
    _round(runs[2], 1, [(cid, "passage", 0.1, 0.0) for cid in CONTEXTS])  # its round 1 lacks self_edit
    with pytest.raises(ValueError, match="seed2/evaluations/val_round1.json: no self_edit rows"):
        seeds(runs)
    other = tmp_path / "other"
    _round(other, 0, [("z", "passage", 0.1, 0.0), ("z", "base_self_edit", 0.1, 0.0)])
    with pytest.raises(ValueError, match="other validation contexts"):
        seeds([runs[0], other])


def test_a_test_split_pairs_every_seed_with_one_untrained_baseline(tmp_path, capsys):
    """``--baselines``: each seed's test self_edit rows minus the one shared passage/base_self_edit test."""
    base = (0.10, 0.00, 0.20, 0.10)
    _round(
        tmp_path / "untrained",
        0,
        [
            r
            for c, b, p in zip(CONTEXTS, base, PASSAGE)
            for r in ((c, "passage", p, 1.0), (c, "base_self_edit", b, 0.0))
        ],
    )
    gains = [(0.10, 0.00, 0.05, 0.05), (0.02, 0.04, 0.00, 0.02)]
    tests = []
    for s, gain in enumerate(gains):
        _round(tmp_path / f"seed{s}", 3, [(c, "self_edit", b + g, 0.5) for c, b, g in zip(CONTEXTS, base, gain)])
        tests.append(tmp_path / f"seed{s}" / "evaluations" / "val_round3.json")
    baselines = tmp_path / "untrained" / "evaluations" / "val_round0.json"
    main(["seeds", *map(str, tests), "--baselines", str(baselines), "--out", str(tmp_path / "test.json")])
    result = json.loads((tmp_path / "test.json").read_text())
    entry = result["rounds"]["test"]["self_edit"]
    assert [p["mean"] for p in entry["f1_vs_base_self_edit"]["per_seed"]] == pytest.approx([0.05, 0.02])
    pooled = [(a + b) / 2 for a, b in zip(*gains)]
    assert entry["f1_vs_base_self_edit"]["pooled"]["mean"] == pytest.approx(sum(pooled) / 4)
    vs_passage = sum(b + (g0 + g1) / 2 - p for b, g0, g1, p in zip(base, *gains, PASSAGE)) / 4
    assert entry["f1_vs_passage"]["pooled"]["mean"] == pytest.approx(vs_passage)
    assert "| self_edit (test) |" in capsys.readouterr().out and result["baselines"] == str(baselines)
    _round(tmp_path / "short", 3, [("a", "self_edit", 0.1, 0.0)])
    with pytest.raises(
        ValueError, match=r"short/evaluations/val_round3.json: no self_edit rows for contexts \['b', 'c', 'd'\]"
    ):
        seeds([tests[0], tmp_path / "short" / "evaluations" / "val_round3.json"], baselines=baselines)
