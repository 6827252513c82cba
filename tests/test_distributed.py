"""Two-process DDP on CPU (gloo) through the `seal` CLI."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS

TESTS = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "seal_lightning",
        "fit",
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "2",
        "--data.init_args.train_size",
        "5",
        "--trainer.callbacks+=weight_probe.WeightProbe",
        f"--trainer.callbacks.out={cwd / 'weights.json'}",
    ]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd


def test_ddp_ledger_has_every_rank_once(ddp_run):
    records = [json.loads(line) for line in (ddp_run / "checkpoints/tiny/self_edits.jsonl").read_text().splitlines()]
    # 5 passages on 2 ranks: each epoch drops one (a different one) so no passage is trained twice
    for epoch in (0, 1):
        mine = [r for r in records if r["epoch"] == epoch]
        keys = [(r["context_id"], r["sample"]) for r in mine]
        assert len(mine) == 4 * 3 and len(set(keys)) == len(keys)
        assert {r["rank"] for r in mine} == {0, 1}
        by_rank = {rank: {r["context_id"] for r in mine if r["rank"] == rank} for rank in (0, 1)}
        assert len(by_rank[0]) == len(by_rank[1]) == 2 and not by_rank[0] & by_rank[1]


def test_ddp_logged_means_cover_both_ranks(ddp_run):
    records = [json.loads(line) for line in (ddp_run / "checkpoints/tiny/self_edits.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader(next(ddp_run.glob("checkpoints/tiny/logs/version_*/metrics.csv")).open()))
    train = [r for r in rows if r["train/reward_mean"]]
    assert len(train) == 2  # one global batch (2 contexts per rank) per epoch
    for row, epoch in zip(train, (0, 1)):
        mine = [r for r in records if r["epoch"] == epoch]
        assert float(row["train/reward_mean"]) == pytest.approx(sum(r["reward"] for r in mine) / len(mine), abs=1e-6)
        assert float(row["train/kept_fraction"]) == pytest.approx(sum(r["kept"] for r in mine) / len(mine))
    results = json.loads(sorted(ddp_run.glob("checkpoints/tiny/logs/version_*/results.json"))[-1].read_text())
    assert all(v["n"] == 2 for v in results["summary"].values())  # val_size 2: one context per rank, gathered


def test_ddp_ranks_end_with_the_same_weights(ddp_run):
    ranks = json.loads((ddp_run / "weights.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["sums"] == ranks[1]["sums"]
    saved = torch.load(ddp_run / "checkpoints/tiny/last.ckpt", weights_only=True)["state_dict"]
    assert [float(v.double().sum()) for v in saved.values()] == pytest.approx(ranks[0]["sums"])
