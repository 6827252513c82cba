"""End to end through the `seal` CLI on the tiny config (random model, seconds per run)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS

from seal_lightning.cli import main
from seal_lightning.outer import OuterConfig

TINY = str(CONFIGS / "tiny.yaml")


def _ledger(run_dir):
    return [json.loads(line) for line in (run_dir / "self_edits.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`seal fit --config configs/tiny.yaml` run in a fresh directory."""
    cwd = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        main(["fit", "--config", TINY])
    return cwd / "checkpoints" / "tiny"


def test_fit_writes_ledger_and_lora_only_checkpoint(fitted):
    records = _ledger(fitted)
    assert len(records) == 4 * 3  # 4 training passages x K=3
    assert {(r["context_id"], r["sample"]) for r in records} == {
        (r["context_id"], s) for r in records for s in range(3)
    }
    for r in records:
        assert set(r) >= {
            "context_id",
            "epoch",
            "global_step",
            "sample",
            "text",
            "baseline",
            "post",
            "reward",
            "kept",
            "inner_loss",
            "seconds",
        }
        assert r["epoch"] == 0 and (r["reward"] == 0.0 if "error" in r else r["reward"] == r["post"] - r["baseline"])
    for cid in {r["context_id"] for r in records}:  # best-of-K above the config's threshold (-1.0)
        row = sorted((r for r in records if r["context_id"] == cid), key=lambda r: r["sample"])
        score = [-float("inf") if "error" in r else r["reward"] for r in row]  # a failed self-edit is never kept
        best = max(range(3), key=lambda i: (score[i], -i))
        assert [r["kept"] for r in row] == [i == best and score[i] > -1.0 for i in range(3)]
    ckpt = torch.load(fitted / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["callbacks"]["SelfEditCallback"]["ledger_offset"] == (fitted / "self_edits.jsonl").stat().st_size
    metrics = (next(fitted.glob("logs/version_*/metrics.csv"))).read_text()
    assert "train/reward_mean" in metrics and "train/sft_loss" in metrics and "val/passage/f1" in metrics


def test_same_seed_same_self_edits_and_rewards_and_one_override_moves_the_run(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", TINY, "--trainer.default_root_dir", "elsewhere"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    run = tmp_path / "elsewhere"
    assert strip(_ledger(run)) == strip(_ledger(fitted))
    # every output of the run under trainer.default_root_dir, nothing in the config's checkpoints/tiny
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]
    assert {"last.ckpt", "self_edits.jsonl", "rounds.json", "evaluations", "logs"} <= {p.name for p in run.iterdir()}
    assert {p.name for p in (run / "logs" / "version_0").iterdir()} >= {"metrics.csv", "results.json", "config.yaml"}


def test_reward_over_the_context_alone_through_the_cli(tmp_path, monkeypatch, capsys):
    """``--model.outer.reward over_context``: one more inner update per passage, on the passage alone;
    the first batch's self-edits and their updates are the plain run's, only the baseline differs
    (the gold answers' log-probability: the tiny model's F1 is 0 everywhere)."""
    monkeypatch.chdir(tmp_path)
    logprob = ["--model.task", "seal_lightning.tasks.knowledge.KnowledgeTask", "--model.task.metric", "logprob"]
    main(["fit", "--config", TINY, *logprob, "--trainer.default_root_dir", "plain"])
    main(
        [
            "fit",
            "--config",
            TINY,
            *logprob,
            "--model.outer.reward",
            "over_context",
            "--trainer.enable_progress_bar",
            "true",
            "--trainer.callbacks+=TQDMProgressBar",
            "--trainer.default_root_dir",
            "alone",
        ]
    )
    assert "8/8" in capsys.readouterr().err  # 2 passages x (K=3 + the passage alone) per batch
    first = lambda rs: [r for r in rs if r["global_step"] == 0]  # noqa: E731
    records, plain = first(_ledger(tmp_path / "alone")), first(_ledger(tmp_path / "plain"))
    assert [r["text"] for r in records] == [r["text"] for r in plain]
    assert [r["post"] for r in records] == pytest.approx(
        [r["post"] for r in plain], rel=1e-4
    )  # batched: other batch shapes
    assert all(r["reward"] == 0.0 if "error" in r else r["reward"] == r["post"] - r["baseline"] for r in records)
    assert [r["baseline"] for r in records] != [r["baseline"] for r in plain]


def test_seed_everything_drives_the_e_step_and_evaluation_seeds(fitted, tmp_path, monkeypatch):
    import yaml

    from seal_lightning.cli import SealCLI

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", TINY, "--seed_everything", "1", "--trainer.default_root_dir", "one"])
    config = yaml.safe_load((tmp_path / "one" / "logs" / "version_0" / "config.yaml").read_text())
    assert config["self_edit"]["seed"] == 1 and config["model"]["eval"]["seed"] == 1 + 1234
    assert config["model"]["sft_seed"] == 1  # the M-step's shuffle of kept pairs
    # the untrained policies are equal (LoRA B starts at 0): only the sampling seed tells the runs apart
    assert [r["text"] for r in _ledger(tmp_path / "one")] != [r["text"] for r in _ledger(fitted)]
    saved = yaml.safe_load(next(fitted.glob("logs/version_0/config.yaml")).read_text())
    assert saved["self_edit"]["seed"] == 0 and saved["model"]["eval"]["seed"] == 1234  # seed_everything: 0
    explicit = SealCLI(args=["--config", TINY, "--seed_everything", "1", "--self_edit.seed", "5"], run=False)
    assert explicit.config_init.self_edit.seed == 5 and explicit.model.evaluator.seed == 1235
    assert explicit.model.hparams.sft_seed == 1


def test_resume_from_last_and_test(fitted, monkeypatch, capsys):
    monkeypatch.chdir(fitted.parent.parent)
    first = _ledger(fitted)
    main(["fit", "--config", TINY, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    records = _ledger(fitted)
    assert records[: len(first)] == first and len(records) == 2 * len(first)
    assert {r["epoch"] for r in records[len(first) :]} == {1}
    assert torch.load(fitted / "last.ckpt", weights_only=True)["epoch"] == 1
    main(["test", "--config", TINY, "--ckpt_path", "last"])
    out = capsys.readouterr()
    assert "no_update" in out.out + out.err and "self_edit" in out.out + out.err
    results = json.loads(sorted(fitted.glob("logs/version_*/results.json"))[-1].read_text())
    assert results["stage"] == "test"
    assert set(results["summary"]) == {"no_update", "passage", "base_self_edit", "self_edit", "oracle"}
    assert all(results["summary"][c]["n"] == 2 for c in results["summary"])


def test_missing_data_file_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        main(["fit", "--config", TINY, "--data.init_args.path", "nope.json"])


def test_unknown_model_spec_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        main(["fit", "--config", TINY, "--model.model", "./no/such/model"])


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--model.outer.k", "many"),
        ("--model.outer.kk", "3"),
        ("--model.inner.rank", "4"),
        ("--trainer.max_epochs", "1.5"),
    ],
)
def test_bad_config_value_or_unknown_key_is_rejected(tmp_path, monkeypatch, capsys, flag, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", TINY, flag, value])
    assert exit_info.value.code != 0 and not (tmp_path / "checkpoints").exists()
    assert flag.split(".")[-1] in capsys.readouterr().err  # jsonargparse names the key


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_fit_into_a_run_folder_is_refused_and_the_run_left_untouched(fitted, monkeypatch):
    before = _files(fitted)
    monkeypatch.chdir(fitted.parent.parent)  # the fixture's working directory: configs/tiny.yaml's folder again
    refusal = (
        r"already holds a run \(.*self_edits\.jsonl.*\).*--ckpt_path last.*--trainer\.default_root_dir.*--overwrite"
    )
    with pytest.raises(FileExistsError, match=refusal):
        main(["fit", "--config", TINY])
    assert _files(fitted) == before  # byte-identical: ledger, rounds, checkpoints, run.json, logs


def test_overwrite_replaces_the_earlier_runs_files(fitted, tmp_path, monkeypatch):
    run = tmp_path / "checkpoints" / "tiny"
    shutil.copytree(fitted, run)
    (run / "epoch=9-step=99.ckpt").write_bytes(b"an older run's checkpoint")
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", TINY, "--overwrite", "true"])
    assert not (run / "epoch=9-step=99.ckpt").exists()

    def records(folder):  # the same run again: the same self-edits, rewards and choices, timings aside
        return [{k: v for k, v in r.items() if k != "seconds"} for r in _ledger(folder)]

    fresh = records(run)  # other tests extend the fixture's run: its first round is this run
    assert len(fresh) == 4 * 3 and fresh == records(fitted)[: len(fresh)]


def test_seal_help_lists_every_command_and_each_has_its_own_help(capsys):
    from seal_lightning.cli import COMMANDS

    main(["--help"])
    listed = capsys.readouterr().out
    assert set(COMMANDS) == {
        "fit",
        "validate",
        "test",
        "predict",
        "export",
        "adapt",
        "report",
        "collect",
        "compare",
        "seeds",
        "plan",
    }
    for name in COMMANDS:
        assert f"  {name} " in listed
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out.lower(), name
    with pytest.raises(SystemExit) as exit_info:  # no command: the list, and a usage error
        main([])
    assert exit_info.value.code == 2 and "commands:" in capsys.readouterr().out


def test_an_unknown_reward_name_is_refused_when_the_config_is_parsed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", TINY, "--model.outer.reward", "gian"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "reward" in err and "gian" in err
    assert all(name in err for name in ("gain", "over_context", "post"))  # the choices are named
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ValueError, match="model.outer.reward: 'gian' is not one of gain, over_context, post"):
        OuterConfig(reward="gian")


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:  # in this process: a subprocess each costs ~10 s of imports
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    assert "self_edit:" in out.out and "model:" in out.out


def test_the_module_entry_point_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "seal_lightning", "fit", "--config", TINY, "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "model: tiny-random-llama" in out.stdout


def test_predict_returns_one_self_edit_per_test_context(fitted, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.chdir(fitted.parent.parent)
    captured = {}
    monkeypatch.setattr(
        LightningCLI,
        "after_predict",
        lambda self: captured.update(out=self.trainer.predict_loop.predictions),
        raising=False,
    )
    main(["predict", "--config", TINY, "--ckpt_path", "last"])
    rows = [row for batch in captured["out"] for row in batch]
    assert len(rows) == 2 and all(r["context_id"].startswith("fictional-") and isinstance(r["text"], str) for r in rows)


def test_progress_bar_shows_inner_updates_and_tensorboard_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            TINY,
            "--trainer.enable_progress_bar",
            "true",
            "--trainer.callbacks+=TQDMProgressBar",
            "--trainer.max_epochs",
            "2",
            "--tensorboard",
            "true",
        ]
    )
    err = capsys.readouterr().err
    assert "inner updates" in err and "6/6" in err  # 2 passages x K=3 per batch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    version = tmp_path / "checkpoints" / "tiny" / "logs" / "version_0"
    assert (version / "metrics.csv").is_file()  # CSV still logs beside TensorBoard, in the same version
    events = EventAccumulator(str(version), size_guidance={"tensors": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    assert {"train/reward_mean", "train/reward_max", "train/kept_fraction", "val/self_edit/f1"} <= set(tags["scalars"])
    assert [h.step for h in events.Histograms("train/reward")] == [0, 1]  # one per round
    assert sum(h.histogram_value.num for h in events.Histograms("train/reward")) == 2 * 4 * 3
    ledger = _ledger(tmp_path / "checkpoints" / "tiny")
    texts = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("train/kept_self_edits/text_summary")]
    assert len(texts) == 2
    for epoch, text in enumerate(texts):
        kept = [r for r in ledger if r["epoch"] == epoch and r["kept"]]
        assert kept and text.count("**") == 2 * len(kept) and all(r["context_id"] in text for r in kept)


def test_prompt_variants_are_compared_in_one_evaluation(fitted, monkeypatch):
    monkeypatch.chdir(fitted.parent.parent)
    main(["test", "--config", TINY, "--ckpt_path", "last", "--model.eval.prompts", "[rewrite, self-qa]"])
    results = json.loads(max(fitted.glob("logs/version_*/results.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert list(results["summary"]) == [
        "no_update",
        "passage",
        "base_self_edit",
        "self_edit",
        "self_edit:rewrite",
        "self_edit:self-qa",
        "oracle",
    ]
    assert all(v["n"] == 2 for v in results["summary"].values())


def test_prompt_variants_need_a_task_that_has_them():
    from seal_lightning import EvalConfig, SEALPolicy
    from seal_lightning.tasks.arc import ArcTask

    with pytest.raises(ValueError, match="ArcTask has no self-edit prompt variants"):
        SEALPolicy(model="tiny-random-llama", task=ArcTask(), eval=EvalConfig(prompts=["rewrite"]))
    with pytest.raises(ValueError, match="'summarise' is neither one of"):
        SEALPolicy(model="tiny-random-llama", eval=EvalConfig(prompts=["summarise"]))


def test_the_command_line_wins_over_a_checkpoint_files_hyperparameters(fitted, monkeypatch):
    """Lightning fills the model's arguments from a checkpoint file; flags given with it still count."""
    monkeypatch.chdir(fitted.parent.parent)
    main(
        [
            "test",
            "--config",
            TINY,
            "--ckpt_path",
            str(fitted / "last.ckpt"),
            "--model.eval.conditions",
            "[no_update, self_edit]",
        ]
    )
    results = json.loads(max(fitted.glob("logs/version_*/results.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert list(results["summary"]) == ["no_update", "self_edit"]


def test_synthetic_self_edits_from_a_file_are_a_condition(fitted, monkeypatch, tmp_path):
    from seal_lightning.tasks.knowledge import fictional_passages

    monkeypatch.chdir(fitted.parent.parent)
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text(
        "\n".join(
            json.dumps({"context_id": p["id"], "text": p["context"].replace(". ", ".\n")})
            for p in fictional_passages(12)
        )
    )
    conditions = "[no_update, passage, synthetic, self_edit]"
    main(
        [
            "test",
            "--config",
            TINY,
            "--ckpt_path",
            "last",
            "--data.init_args.synthetic",
            str(synthetic),
            "--model.eval.conditions",
            conditions,
        ]
    )
    results = json.loads(max(fitted.glob("logs/version_*/results.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert list(results["summary"]) == ["no_update", "passage", "synthetic", "self_edit"]
    assert results["summary"]["synthetic"]["n"] == 2
    with pytest.raises(ValueError, match="'synthetic' but context 'fictional-0-.*' has no synthetic text"):
        main(["test", "--config", TINY, "--ckpt_path", "last", "--model.eval.conditions", conditions])


def test_continued_pretraining_rows_join_the_table(fitted, monkeypatch):
    monkeypatch.chdir(fitted.parent.parent)
    main(
        [
            "test",
            "--config",
            TINY,
            "--ckpt_path",
            "last",
            "--model.eval.continued_pretraining",
            "true",
            "--model.eval.conditions",
            "[no_update, passage]",
        ]
    )
    results = json.loads(max(fitted.glob("logs/version_*/results.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert list(results["summary"]) == ["no_update", "passage", "cpt_passage", "cpt_self_edit"]
    assert all(v["n"] == 2 for v in results["summary"].values())
