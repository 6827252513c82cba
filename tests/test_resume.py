"""Kill a real `seal fit` with SIGKILL at three points, resume each time with `--ckpt_path last`, and
compare with an uninterrupted run: one ledger record per (context, sample, epoch), same records,
same final weights and metrics."""

import json
import subprocess
import sys
import time

import torch
from conftest import CONFIGS

FIT = [
    sys.executable,
    "-m",
    "seal_lightning",
    "fit",
    "--config",
    str(CONFIGS / "tiny.yaml"),
    "--trainer.max_epochs",
    "2",
    "--data.init_args.train_size",
    "6",  # 3 batches per epoch
    "--trainer.callbacks.every_n_train_steps",
    "1",
]  # a checkpoint after every batch


def _records(run):
    path = run / "checkpoints/tiny/self_edits.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _fit_until(cwd, condition, resume: bool) -> bool:
    """Run `seal fit` until ``condition()`` holds, then SIGKILL it; False if it finished first."""
    proc = subprocess.Popen(
        FIT + (["--ckpt_path", "last"] if resume else []),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None:
        if condition():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return False


def _final(run):
    state = torch.load(run / "checkpoints/tiny/last.ckpt", weights_only=True)["state_dict"]
    results = json.loads(sorted((run / "checkpoints/tiny/logs").glob("version_*/results.json"))[-1].read_text())
    return state, results["summary"]


def test_sigkill_at_three_points_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert not _fit_until(whole, lambda: False, resume=False)
    ckpts = killed / "checkpoints/tiny"
    points = [
        lambda: len(_records(killed)) >= 6,  # right after the first batch's E-step, before its checkpoint
        lambda: (ckpts / "epoch=0-step=2.ckpt").exists(),  # right after a mid-epoch checkpoint
        lambda: any(r["epoch"] == 1 for r in _records(killed)),  # in the second epoch
    ]
    for i, point in enumerate(points):
        assert _fit_until(killed, point, resume=i > 0), f"the run finished before kill point {i}"
    assert not _fit_until(killed, lambda: False, resume=True)

    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    records = _records(killed)
    keys = [(r["context_id"], r["sample"], r["epoch"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * 6 * 3
    assert strip(records) == strip(_records(whole))
    (state, summary), (state_whole, summary_whole) = _final(killed), _final(whole)
    assert state.keys() == state_whole.keys()
    assert all(torch.equal(state[k], state_whole[k]) for k in state)
    assert summary == summary_whole


def test_resume_from_an_end_of_epoch_checkpoint_keeps_the_next_epochs_order(tmp_path, monkeypatch):
    """The default checkpoint is written after validation (inside fit, not training): the next epoch
    must draw the same batches as in an uninterrupted run."""
    from seal_lightning.cli import main

    tiny = str(CONFIGS / "tiny.yaml")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    for name, steps in (
        ("whole", [["--trainer.max_epochs", "2"]]),
        ("resumed", [["--trainer.max_epochs", "1"], ["--trainer.max_epochs", "2", "--ckpt_path", "last"]]),
    ):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        for args in steps:
            main(["fit", "--config", tiny, *args])
    assert strip(_records(tmp_path / "resumed")) == strip(_records(tmp_path / "whole"))
