"""The paper's experiments: Table 2 across ReST-EM rounds (with synthetic self-edits written by `seal
predict`), sequential self-edits and the retention matrix (forgetting), continued pretraining; each
config run on the tiny model."""

import copy
import hashlib
import json
import logging
import shutil

import pytest
import torch
from conftest import CONFIGS

from seal_lightning import SamplingConfig, SEALPolicy
from seal_lightning.cli import main
from seal_lightning.evaluation.forgetting import forgetting
from seal_lightning.inner import InnerConfig, InnerJob, SequentialLoRA
from seal_lightning.inner.batched import BatchedLoRA
from seal_lightning.lm.lora_io import merge_into
from seal_lightning.outer.ledger import read_ledger
from seal_lightning.tasks.knowledge import KnowledgeTask, fictional_passages
from seal_lightning.utils import derive_seed

TINY_MODEL = [  # the SmolLM2 experiment configs, shrunk to the tiny random model and fictional passages
    "--model.model",
    "tiny-random-llama",
    "--model.lora.r",
    "4",
    "--model.lora.alpha",
    "8",
    "--model.inner.r",
    "4",
    "--model.inner.alpha",
    "8",
    "--model.inner.epochs",
    "2",
    "--model.inner.answer_tokens",
    "8",
    "--model.sampling.max_new_tokens",
    "24",
    "--data.init_args.path",
    "builtin:fictional:12",
]
TEXTS = [("", "Velmora was founded by Ada Quill in 1802."), ("", "The river Tamsin runs north of Velmora.")]


def test_table2_rounds_with_synthetic_self_edits_in_one_command(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    lightning_log = logging.getLogger("lightning.pytorch")  # does not propagate to caplog's root handler
    lightning_log.addHandler(caplog.handler)
    config = ["--config", str(CONFIGS / "table2.yaml"), *TINY_MODEL]
    synthetic = tmp_path / "synthetic.jsonl"
    main(
        [
            "predict",
            *config,
            "--data.init_args.predict_split",
            "val",
            "--trainer.callbacks+=seal_lightning.SelfEditWriter",
            "--trainer.callbacks.output",
            str(synthetic),
        ]
    )
    written = [json.loads(line) for line in synthetic.read_text().splitlines()]
    assert len(written) == 8 and all(set(r) == {"context_id", "text"} and r["text"] for r in written)

    fit = [
        "fit",
        *config,
        "--data.init_args.synthetic",
        str(synthetic),
        "--model.outer.threshold",
        "-1.0",
        "--model.eval.conditions",
        "[no_update, passage, base_self_edit, synthetic]",
    ]
    main(fit)
    run = tmp_path / "checkpoints" / "table2"
    rounds = json.loads((run / "rounds.json").read_text())
    assert list(rounds["summary"]) == [
        "no_update",
        "passage",
        "synthetic",
        "base_self_edit",
        "self_edit (round 1)",
        "self_edit (round 2)",
    ]
    assert all(v["n"] == 8 for v in rounds["summary"].values())
    steps = {int(r): s for r, s in rounds["global_steps"].items()}
    assert steps[0] == 0 < steps[1] < steps[2]  # each round's M-step took optimiser steps
    lightning_log.removeHandler(caplog.handler)
    assert "validation by ReST-EM round\ncondition" in caplog.text
    round1 = json.loads((run / "evaluations" / "val_round1.json").read_text())
    assert list(round1["summary"]) == ["self_edit"]  # model.eval.fit_conditions: the baselines only once

    # the round-2 row is the trained policy's own validation, reproduced by `seal validate` of last.ckpt
    main(["validate", *config, "--ckpt_path", "last", "--model.eval.conditions", "[self_edit]"])
    again = json.loads(max(run.glob("logs/version_*/results.json"), key=lambda p: p.stat().st_mtime).read_text())
    round2 = rounds["summary"]["self_edit (round 2)"]
    assert again["summary"]["self_edit"] == {k: v for k, v in round2.items() if k in again["summary"]["self_edit"]}
    # every round's row is paired with round 0's base_self_edit on the same validation passages
    assert rounds["reference"] == "base_self_edit" and round2["reference"] == "base_self_edit"
    assert round2["f1_delta"] == pytest.approx(round2["f1"] - rounds["summary"]["base_self_edit"]["f1"])

    # resumed for a third round: round 0 is not validated again, round 3 joins the table
    round0 = (run / "evaluations" / "val_round0.json").read_text()
    main([*fit, "--ckpt_path", "last", "--trainer.max_epochs", "3"])
    rounds = json.loads((run / "rounds.json").read_text())
    assert list(rounds["summary"])[-1] == "self_edit (round 3)" and len(rounds["summary"]) == 7
    assert (run / "evaluations" / "val_round0.json").read_text() == round0

    main(["report", str(run)])
    report = (run / "report" / "report.md").read_text()
    assert "## Validation by ReST-EM round" in report and "self_edit (round 3)" in report
    assert (run / "report" / "rounds.png").stat().st_size > 10_000

    # `seal collect`: the small files to commit, a per-round ledger summary and the README's table
    main(["collect", str(run), str(tmp_path / "collected")])
    collected = tmp_path / "collected"
    assert {p.name for p in collected.iterdir()} == {
        "evaluations",
        "ledger_summary.json",
        "phases.json",
        "rounds.json",
        "run.json",
    }
    phases = json.loads((collected / "phases.json").read_text())  # where the time and the memory went
    steps = {(r["epoch"], r["global_step"]) for r in read_ledger(run / "self_edits.jsonl")}
    assert phases["sample"]["logged"] == phases["score"]["logged"] == phases["mstep"]["logged"] == len(steps) == 3
    assert phases["validation"]["logged"] == 5  # rounds 0-2, `seal validate`, round 3
    assert all(p["seconds_total"] > 0 and 0.3 < p["peak_rss_gb"] < 20 for p in phases.values())
    assert json.loads((collected / "rounds.json").read_text()) == rounds
    summary, ledger = json.loads((collected / "ledger_summary.json").read_text()), read_ledger(run / "self_edits.jsonl")
    assert list(summary) == ["1", "2", "3"] and [v["self_edits"] for v in summary.values()] == [4 * 3] * 3
    third = [r["reward"] for r in ledger if r["epoch"] == 2]
    assert summary["3"]["reward_mean"] == pytest.approx(sum(third) / len(third))
    assert summary["3"]["kept"] == sum(r["kept"] for r in ledger if r["epoch"] == 2)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| self_edit (round 3) |"))
    assert f"{rounds['summary']['self_edit (round 3)']['f1_delta']:+.3f} ± " in row
    assert f"{summary['3']['reward_mean']:+.4f}" in row

    # a run stopped before its end (no rounds.json yet): the rounds it validated, marked as such
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    (stopped / "rounds.json").unlink()
    (stopped / "evaluations" / "val_round3.json").unlink()
    main(["collect", str(stopped), str(tmp_path / "collected_stopped")])
    partial = json.loads((tmp_path / "collected_stopped" / "rounds.json").read_text())
    assert partial["stopped_early"] and list(partial["summary"]) == list(rounds["summary"])[:-1]
    assert partial["summary"]["self_edit (round 2)"] == rounds["summary"]["self_edit (round 2)"]

    # a fresh run in the same directory is refused; replacing the run starts its table afresh
    fresh = ["fit", *config, "--validate_before_fit", "false", "--trainer.max_epochs", "1"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        main(fresh)
    main([*fresh, "--overwrite", "true"])
    assert list(json.loads((run / "rounds.json").read_text())["summary"]) == ["self_edit (round 1)"]
    capsys.readouterr()
    main(["collect", str(run), str(tmp_path / "collected_fresh")])
    assert "| condition | f1 | Δf1 vs (none: no round 0) |" in capsys.readouterr().out


def test_fit_conditions_are_checked():
    from seal_lightning import EvalConfig

    with pytest.raises(ValueError, match=r"model.eval.fit_conditions: unknown \['seal'\]"):
        SEALPolicy(model="tiny-random-llama", eval=EvalConfig(fit_conditions=["seal"]))


@pytest.mark.parametrize("engine", [SequentialLoRA, BatchedLoRA])
def test_a_kept_adapter_merged_into_the_base_gives_the_adapted_model(tiny, engine):
    model, tok = tiny
    config = InnerConfig(r=4, alpha=8, epochs=10, lr=3e-2, batch_size=2)
    (result,) = engine(config).run(
        copy.deepcopy(model).requires_grad_(False),
        tok,
        [InnerJob(TEXTS, ["Who founded Velmora?"], seed=5, keep_adapter=True)],
    )
    adapter = result.extra["adapter"]
    assert len(adapter) == 2 * 7 and all(A.device.type == "cpu" and B.abs().sum() > 0 for A, B, _ in adapter.values())
    reference = SequentialLoRA(config)  # the same job, its trained peft model kept for the comparison
    reference.run(copy.deepcopy(model).requires_grad_(False), tok, [InnerJob(TEXTS, ["q"], seed=5)])
    merged = copy.deepcopy(model).requires_grad_(False)
    merge_into(merged, adapter)
    ids = tok("Velmora was founded by", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got, plain = (m(ids).logits for m in (reference._model, merged, model))
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(plain, expected, atol=1e-2)


class HashTask(KnowledgeTask):
    """Knowledge incorporation graded by a hash of the answers: a real number that changes whenever
    the (random) tiny model's answers change, so the retention matrix can be checked exactly."""

    def grade(self, context, answers):
        return {"f1": int(hashlib.sha256("\x00".join(answers).encode()).hexdigest()[:8], 16) / 16**8}

    def zero(self):
        return {"f1": 0.0}


def test_forgetting_applies_self_edits_one_after_another(monkeypatch):
    policy = SEALPolicy(
        model="tiny-random-llama",
        task=HashTask(),
        lora=None,
        inner=InnerConfig(r=4, alpha=8, epochs=6, lr=3e-2, batch_size=2, answer_tokens=6),
        sampling=SamplingConfig(max_new_tokens=8),
    )
    policy.configure_model()
    contexts = fictional_passages(3)
    edits = [
        "Velmora was founded by Ada Quill.\nAda Quill lived in Velmora.",
        "ok",
        "The river Tamsin runs north.\nThe Tamsin is a river.",
    ]
    monkeypatch.setattr(policy.rollout, "sample", lambda ctx, k, seed: ([""] * len(ctx), [[e] for e in edits]))
    rows, record = forgetting(policy.rollout, contexts, seed=7)

    questions = [q for c in contexts for q in policy.rollout.question_prompts(c)]
    counts = [len(c["questions"]) for c in contexts]

    def grade(answers):  # each context's score from its own questions' answers
        starts = [sum(counts[:j]) for j in range(len(contexts))]
        return [policy.rollout.task.grade(c, answers[s : s + n]) for c, s, n in zip(contexts, starts, counts)]

    assert record["before"]["f1"] == [
        s["f1"] for s in grade(policy.rollout.answer_with(policy.rollout.frozen_copy(), questions))
    ]

    def update(base, i):
        job = policy.rollout.task.inner_job(contexts[i], edits[i], derive_seed(7, i))
        job.questions, job.keep_adapter = questions, True
        return policy.rollout.run_inner([job], base=copy.deepcopy(base))[0]

    base = policy.rollout.frozen_copy()
    first = update(base, 0)
    merge_into(base, first.extra["adapter"])
    third = update(base, 2)  # on top of the first update (the second failed)
    alone = update(policy.rollout.frozen_copy(), 2)
    after = record["after"]["f1"]
    assert after[0] == [s["f1"] for s in grade(first.answers)]
    assert record["errors"][1] == "self-edit has no line of at least 8 characters" and after[1] == after[0]
    assert after[2] == [s["f1"] for s in grade(third.answers)] != [s["f1"] for s in grade(alone.answers)]
    assert [r["f1"] for r in rows] == after[2] and {r["condition"] for r in rows} == {"sequential"}


def test_forgetting_and_cpt_configs_on_the_tiny_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["test", "--config", str(CONFIGS / "forgetting.yaml"), *TINY_MODEL, "--data.init_args.test_size", "3"])
    run = tmp_path / "checkpoints" / "forgetting"
    logs = next(run.glob("logs/version_*"))
    record = json.loads((logs / "forgetting.json").read_text())
    assert len(record["contexts"]) == 3 and len(record["after"]["f1"]) == 3 and len(record["after"]["f1"][2]) == 3
    results = json.loads((logs / "results.json").read_text())
    assert list(results["summary"]) == ["no_update", "self_edit", "sequential"]
    no_update = {r["context_id"]: r["f1"] for r in results["per_context"] if r["condition"] == "no_update"}
    assert record["before"]["f1"] == [no_update[c] for c in record["contexts"]]  # the same untouched model
    main(["report", str(run)])
    report = (run / "report" / "report.md").read_text()
    assert "## Forgetting" in report and "after update 3" in report and "## Self-edits" not in report
    assert (run / "report" / "forgetting.png").stat().st_size > 10_000

    main(["test", "--config", str(CONFIGS / "cpt.yaml"), *TINY_MODEL, "--data.init_args.test_size", "3"])
    results = json.loads(next((tmp_path / "checkpoints" / "cpt").glob("logs/version_*/results.json")).read_text())
    assert list(results["summary"]) == ["no_update", "passage", "self_edit", "cpt_passage", "cpt_self_edit"]
