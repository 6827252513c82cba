"""Few-shot ARC as a plug-in of the same policy and callback (tiny random model, seconds)."""

import json

import pytest
import torch
from conftest import CONFIGS

from seal_lightning import EvalConfig, SamplingConfig, SEALPolicy
from seal_lightning.cli import main
from seal_lightning.inner import InnerConfig
from seal_lightning.tasks import SelfEditError
from seal_lightning.tasks.arc import ArcDataModule, ArcTask
from seal_lightning.tasks.arc.grids import grid_to_text
from seal_lightning.tasks.arc.recipe import DEFAULT_RECIPE
from seal_lightning.tasks.arc.sources import load_arc

RECORD = load_arc("builtin:generated:1:3:4")[0]


def test_inner_job_follows_the_recipe():
    task = ArcTask(max_tasks=5, max_epochs=3)
    default = task.inner_job(RECORD, None, seed=0)
    assert (default.lr, default.epochs) == (DEFAULT_RECIPE.learning_rate, DEFAULT_RECIPE.num_train_epochs)
    assert len(default.sequences) == 5 and all(p == "" for p, _ in default.sequences)  # all tokens trained
    assert default.eos  # each output grid ends with EOS, so a TTT-trained model stops after the grid
    recipe = json.loads(DEFAULT_RECIPE.to_json())
    recipe["training"].update(strategy="train_using_output_tokens", learning_rate=5e-4, num_train_epochs=3)
    job = task.inner_job(RECORD, "Here you go: " + json.dumps(recipe), seed=0)
    assert (job.lr, job.epochs) == (5e-4, 3)
    for prompt, completion in job.sequences:  # loss on the output grid only
        assert prompt.endswith("output:\n") and completion.strip().replace("\n", "").isdigit()
    recipe["training"]["num_train_epochs"] = 4
    with pytest.raises(SelfEditError, match="budget of 3"):
        task.inner_job(RECORD, json.dumps(recipe), seed=0)
    with pytest.raises(SelfEditError, match="unknown key"):
        task.inner_job(RECORD, '{"use_basic_augmentations": true, "rm -rf": 1}', seed=0)


def test_grade_is_exact_match_of_the_parsed_grid():
    task, answer = ArcTask(), grid_to_text(RECORD["test"][1])
    assert task.grade(RECORD, [answer + "\n"]) == {"solved": 1.0}
    assert task.grade(RECORD, [answer[:-1] + ("1" if answer[-1] != "1" else "2")]) == {"solved": 0.0}
    assert task.grade(RECORD, ["output: no idea"]) == {"solved": 0.0}


def test_prompt_longer_than_the_context_scores_zero_with_reason(tiny):
    huge = [[[(i + j) % 10 for j in range(30)] for i in range(30)]] * 2
    context = {"id": "huge", "train": [(huge[0], huge[1])] * 3, "test": (huge[0], huge[1])}
    policy = SEALPolicy(
        model="tiny-random-llama",
        task=ArcTask(max_tasks=2),
        inner=InnerConfig(r=4, alpha=8, epochs=1, answer_tokens=4, answer_stop="\n\n"),
    )
    policy.configure_model()
    baseline, outcomes = policy.rollout.score_updates([context, RECORD], [[None], [None]], seed=0)
    assert "exceeds the model's context of 1024" in baseline[0].error and baseline[0].scores == {"solved": 0.0}
    assert outcomes[0][0].error == baseline[0].error and outcomes[0][0].result is None
    assert (
        baseline[1].error is None
        and outcomes[1][0].error is None
        and outcomes[1][0].result.steps == 2 * DEFAULT_RECIPE.num_train_epochs
    )


def test_data_module_errors_name_the_problem(tmp_path):
    overlap = ArcDataModule(challenges="builtin:generated:4:0:4", train_challenges="builtin:generated:4:0:4")
    with pytest.raises(ValueError, match="share tasks"):
        overlap.setup("fit")
    challenges = tmp_path / "c.json"
    challenges.write_text(
        json.dumps({"t1": {"train": [{"input": [[1]], "output": [[2]]}] * 2, "test": [{"input": [[1]]}]}})
    )
    with pytest.raises(ValueError, match="no test output for task 't1'.*data.solutions"):
        ArcDataModule(challenges=str(challenges)).setup("test")
    limited = ArcDataModule(challenges="builtin:generated:6:1:4", limit=2)
    limited.setup("test")
    assert [r["id"] for r in limited.test_set] == ["generated-1-0", "generated-1-1"]


def test_arc_tiny_fit_and_test_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "arc_tiny.yaml")])
    run = tmp_path / "checkpoints" / "arc_tiny"
    records = [json.loads(line) for line in (run / "self_edits.jsonl").read_text().splitlines()]
    assert sorted((r["context_id"], r["sample"]) for r in records) == [
        (f"generated-0-{i}", s) for i in range(2) for s in range(2)
    ]
    for r in records:  # a random model writes no valid recipe: each failure is recorded, reward 0
        assert r["reward"] == 0.0 and r["error"]
    results = json.loads(next(run.glob("logs/version_*/results.json")).read_text())
    assert results["stage"] == "test" and set(results["summary"]) == {
        "no_update",
        "passage",
        "base_self_edit",
        "self_edit",
        "oracle",
    }
    assert results["labels"] == ArcTask.condition_labels
    assert all(row["solved"] in (0.0, 1.0) for row in results["per_context"])
    sampled = [row for row in results["per_context"] if row["condition"] in ("base_self_edit", "self_edit")]
    assert sampled and all(row["errors"] for row in sampled)  # why each invalid recipe scored 0
    evaluated = EvalConfig().conditions
    assert len(results["per_context"]) == 2 * len(evaluated)


def test_constrained_sampling_picks_among_the_choices_with_the_models_probabilities(tiny):
    from seal_lightning.generation import Choices, generate

    model, tok = tiny
    choices = ["alpha beta", "alpha gamma delta", "omega"]
    texts = generate(
        model,
        tok,
        ["Pick one:", "Another prompt"],
        max_new_tokens=8,
        num_return_sequences=6,
        do_sample=True,
        seed=0,
        choices=choices,
    )
    assert len(texts) == 12 and set(texts) <= set(choices) and len(set(texts)) >= 2
    trie = Choices(tok, choices)
    ids = tok("alpha gamma delta", add_special_tokens=False)["input_ids"]
    assert trie.allowed(ids) == [tok.eos_token_id] and trie.allowed([tok.eos_token_id]) == [tok.eos_token_id]
    # nearly greedy: the allowed first token the model itself ranks higher
    first = {tok(c, add_special_tokens=False)["input_ids"][0] for c in choices}
    with torch.no_grad():
        logits = model(**tok("Pick one:", return_tensors="pt")).logits[0, -1]
    best = max(first, key=lambda t: logits[t].item())
    (text,) = generate(model, tok, ["Pick one:"], max_new_tokens=8, do_sample=True, temperature=1e-4, choices=choices)
    assert tok(text, add_special_tokens=False)["input_ids"][0] == best
    with pytest.raises(ValueError, match="max_new_tokens=2 is below the longest allowed completion"):
        generate(model, tok, ["x"], max_new_tokens=2, do_sample=True, choices=choices)


def test_constrained_arc_self_edits_are_always_valid_recipes():
    from seal_lightning.tasks.arc.recipe import all_recipes, parse_recipe

    recipes = all_recipes(3)
    assert len(recipes) == 2**4 * 2 * 5 * 3 and all(parse_recipe(r.to_json()) == r for r in recipes)
    policy = SEALPolicy(
        model="tiny-random-llama",
        task=ArcTask(max_tasks=2, max_epochs=3, constrained=True),
        sampling=SamplingConfig(max_new_tokens=96),
    )
    policy.configure_model()
    _, (edits,) = policy.rollout.sample([RECORD], 8, seed=0)
    parsed = [parse_recipe(e) for e in edits]  # a random model, yet every self-edit is a usable recipe
    assert all(r in recipes for r in parsed) and len(set(parsed)) >= 4


def test_constrained_prompt_shows_no_example_recipe():
    free, constrained = ArcTask(), ArcTask(constrained=True)
    assert DEFAULT_RECIPE.to_json() in free.self_edit_prompt(RECORD)
    assert "Example" not in constrained.self_edit_prompt(RECORD)  # a small model would copy it every time
    assert constrained.self_edit_prompt(RECORD) in free.self_edit_prompt(RECORD)


def test_explore_replaces_training_self_edits_with_uniform_valid_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "arc_tiny.yaml"),
            "--model.task.init_args.constrained",
            "true",
            "--model.sampling.max_new_tokens",
            "96",
            "--model.outer.k",
            "4",
            "--model.outer.explore",
            "0.5",
            "--trainer.limit_train_batches",
            "1",
            "--test_after_fit",
            "false",
        ]
    )
    records = [
        json.loads(line) for line in (tmp_path / "checkpoints/arc_tiny/self_edits.jsonl").read_text().splitlines()
    ]
    choices = set(ArcTask(max_epochs=2, constrained=True).self_edit_choices())
    explored = [r for r in records if r.get("explored")]
    assert len(records) == 8 and 0 < len(explored) < 8  # seeded: 0.5 gives some of each
    assert all(r["text"] in choices and "error" not in r for r in records)
    with pytest.raises(ValueError, match="model.outer.explore=0.5 needs a task with a finite set"):
        main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--model.outer.explore", "0.5"])
