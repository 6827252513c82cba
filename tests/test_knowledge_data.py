"""Tests for passage loading, validation and the KnowledgeDataModule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest

from seal_lightning.tasks.knowledge import (
    KnowledgeDataModule,
    fictional_passages,
    load_passages,
)


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def record(**overrides) -> dict:
    questions = [{"question": "Where?", "answer": "Beta"}]
    return {"id": "p0", "title": "T", "context": "Alpha lives in Beta.", "questions": questions, **overrides}


# --- fictional generator -----------------------------------------------------------------------


def test_fictional_deterministic_per_seed_and_different_across_seeds():
    assert fictional_passages(20, seed=3) == fictional_passages(20, seed=3)
    assert fictional_passages(20, seed=3) != fictional_passages(20, seed=4)
    assert [r["id"] for r in fictional_passages(3, seed=7)] == ["fictional-7-0", "fictional-7-1", "fictional-7-2"]


def test_fictional_passages_are_well_formed():
    records = fictional_passages(200, seed=0)
    assert len({r["title"] for r in records}) == 200
    for r in records:
        sentences = [s for s in re.split(r"(?<=\.)\s", r["context"]) if s]
        assert 4 <= len(sentences) <= 7, r["context"]
        assert 4 <= len(r["questions"]) <= 6
        assert r["title"] in r["context"]
        for q in r["questions"]:
            assert q["question"].endswith("?")
            assert q["answers"] and all(a in r["context"] for a in q["answers"]), (q, r["context"])
    assert load_passages("builtin:fictional:12") == fictional_passages(12, seed=0)
    assert len(load_passages("builtin:fictional")) == 200


# --- builtin SQuAD -----------------------------------------------------------------------------


def test_builtin_squad():
    records = load_passages("builtin:squad")
    assert len(records) == 200
    assert len({r["id"] for r in records}) == 200
    assert all(r["id"].startswith("squad-dev-") for r in records)
    assert len({r["title"] for r in records}) == 40
    for r in records:
        assert len(r["questions"]) >= 3 and len(r["context"].split()) <= 160
        for q in r["questions"]:
            assert q["answers"] and all(isinstance(a, str) and a.strip() for a in q["answers"])


def test_unknown_builtin():
    with pytest.raises(ValueError, match="unknown builtin.*builtin:squad"):
        load_passages("builtin:nope")
    with pytest.raises(ValueError, match="whole number"):
        load_passages("builtin:fictional:many")


# --- local files -------------------------------------------------------------------------------


def test_json_file_normalizes_answers_ids_and_titles(tmp_path):
    path = write_json(
        tmp_path / "data.json",
        [
            {"context": "Ann met Bob.", "questions": [{"question": "Who met Bob?", "answer": "Ann"}]},
            {"id": "x", "title": "B", "context": "C is D.", "questions": [{"question": "C?", "answers": "D"}]},
            {"id": 5, "context": "E is F.", "questions": [{"question": "E?", "answers": ["F", "F."]}]},
        ],
    )
    assert load_passages(path) == [
        {
            "id": "data-0",
            "title": "",
            "context": "Ann met Bob.",
            "questions": [{"question": "Who met Bob?", "answers": ["Ann"]}],
        },
        {"id": "x", "title": "B", "context": "C is D.", "questions": [{"question": "C?", "answers": ["D"]}]},
        {"id": "5", "title": "", "context": "E is F.", "questions": [{"question": "E?", "answers": ["F", "F."]}]},
    ]


def test_jsonl_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record()) + "\n\n" + json.dumps(record(id="p1")) + "\n", encoding="utf-8")
    records = load_passages(str(path))
    assert [r["id"] for r in records] == ["p0", "p1"]
    assert records[0]["questions"] == [{"question": "Where?", "answers": ["Beta"]}]


def test_missing_file_names_path_and_builtins(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + ".*builtin:squad"):
        load_passages(str(missing))


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"context": "x",\n   "questions": [}\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: invalid JSON at line 3, column"):
        load_passages(str(path))


def test_invalid_jsonl_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record()) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: invalid JSON"):
        load_passages(str(path))


def test_non_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin.json"
    prefix = b'[{"context": "caf'
    path.write_bytes(prefix + b'\xe9"}]')
    with pytest.raises(ValueError, match=rf"latin\.json: not valid UTF-8 at byte offset {len(prefix)}"):
        load_passages(str(path))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": 1}, r"data\.json: top level must be a list of records, got dict"),
        ([record(), "text"], r"data\.json: record 1: expected an object, got str"),
        ([record(questions=None)], r"data\.json: record 0 \(id 'p0'\): field 'questions' is missing"),
        ([{"id": "q", "context": "c"}], r"data\.json: record 0 \(id 'q'\): field 'questions' is missing"),
        ([record(questions=[])], r"record 0 \(id 'p0'\): field 'questions' must be a non-empty list"),
        ([record(questions="Where?")], r"record 0 \(id 'p0'\): field 'questions' must be a non-empty list"),
        ([{"id": "q", "questions": [{"question": "a", "answer": "b"}]}], r"\(id 'q'\): field 'context' is missing"),
        ([record(context="   ")], r"data\.json: record 0 \(id 'p0'\): field 'context' must be a non-empty string"),
        ([record(questions=[{"question": "Where?"}])], r"questions\[0\]: field 'answer' or 'answers' is missing"),
        ([record(questions=[{"answer": "Beta"}])], r"questions\[0\]: field 'question' is missing"),
        ([record(questions=[{"question": "Where?", "answers": ["Beta", " "]}])], r"questions\[0\]: .*empty"),
        ([record(questions=[{"question": "Where?", "answer": ""}])], r"questions\[0\]: .*empty"),
        ([record(), record(id="p1"), record()], r"record 2 \(id 'p0'\): duplicate id, first used by record 0"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_passages(write_json(tmp_path / "data.json", data))


# --- Hugging Face ------------------------------------------------------------------------------


def test_hf_groups_rows_by_context(monkeypatch):
    rows = [
        {
            "id": "a",
            "title": "T1",
            "context": "Ann met Bob.",
            "question": "Who met Bob?",
            "answers": {"text": ["Ann", "Ann"], "answer_start": [0, 0]},
        },
        {
            "id": "b",
            "title": "T1",
            "context": "Ann met Bob.",
            "question": "Whom did Ann meet?",
            "answers": {"text": ["Bob"], "answer_start": [8]},
        },
        {
            "id": "c",
            "title": "T2",
            "context": "Cy is tall.",
            "question": "Who is tall?",
            "answers": {"text": ["Cy", "Cy is"], "answer_start": [0, 0]},
        },
    ]
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_passages("hf:org/squad")
    assert calls == [("org/squad", "validation")]
    assert records == [
        {
            "id": "org/squad-validation-0",
            "title": "T1",
            "context": "Ann met Bob.",
            "questions": [
                {"question": "Who met Bob?", "answers": ["Ann"]},
                {"question": "Whom did Ann meet?", "answers": ["Bob"]},
            ],
        },
        {
            "id": "org/squad-validation-1",
            "title": "T2",
            "context": "Cy is tall.",
            "questions": [
                {"question": "Who is tall?", "answers": ["Cy", "Cy is"]},
            ],
        },
    ]
    load_passages("hf:org/squad:train")
    assert calls[-1] == ("org/squad", "train")


# --- DataModule --------------------------------------------------------------------------------


def make_dm(**kwargs) -> KnowledgeDataModule:
    dm = KnowledgeDataModule(**{"path": "builtin:fictional:40", **kwargs})
    dm.setup("fit")
    return dm


def ids(split: datasets.Dataset) -> list[str]:
    return list(split["id"])


def test_datamodule_splits_disjoint_sizes_and_deterministic():
    dm = make_dm(val_size=5, test_size=7, seed=1)
    train, val, test = ids(dm.train_set), ids(dm.val_set), ids(dm.test_set)
    assert (len(train), len(val), len(test)) == (28, 5, 7)
    assert len(set(train) | set(val) | set(test)) == 40
    assert isinstance(dm.train_set, datasets.Dataset)

    again = make_dm(val_size=5, test_size=7, seed=1)
    assert (ids(again.train_set), ids(again.val_set), ids(again.test_set)) == (train, val, test)
    assert ids(make_dm(val_size=5, test_size=7, seed=2).test_set) != test

    assert len(make_dm(train_size=10).train_set) == 10


def test_datamodule_batches():
    dm = make_dm(val_size=4, test_size=6, batch_size=4)
    batches = list(dm.train_dataloader())
    assert [len(b["contexts"]) for b in batches] == [4] * 7 + [2]
    first = batches[0]["contexts"][0]
    assert set(first) == {"id", "title", "context", "questions", "synthetic"} and first["synthetic"] == ""
    assert isinstance(first["questions"][0]["answers"], list)
    assert first["questions"][0]["answers"][0] in first["context"]
    assert [len(b["contexts"]) for b in dm.val_dataloader()] == [4]
    assert [len(b["contexts"]) for b in dm.predict_dataloader()] == [4, 2]
    assert [r["id"] for b in dm.test_dataloader() for r in b["contexts"]] == ids(dm.test_set)
    # The training order is shuffled, but reproducibly.
    train_order = [r["id"] for b in batches for r in b["contexts"]]
    assert train_order != ids(dm.train_set)
    assert train_order == [r["id"] for b in make_dm(val_size=4, test_size=6).train_dataloader() for r in b["contexts"]]


def test_datamodule_without_validation():
    dm = make_dm(val_size=0)
    assert dm.val_dataloader() == []
    assert len(dm.val_set) == 0 and dm.val_set.column_names == ["id", "title", "context", "questions", "synthetic"]


def test_datamodule_too_few_passages():
    dm = KnowledgeDataModule(path="builtin:fictional:10", val_size=5, test_size=5)
    with pytest.raises(ValueError, match=r"builtin:fictional:10: 10 passages, but .* needs 11"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="needs 13"):
        KnowledgeDataModule(path="builtin:fictional:10", train_size=3, val_size=5, test_size=5).setup("fit")
    with pytest.raises(ValueError, match="val_size must be >= 0"):
        KnowledgeDataModule(val_size=-1)


# --- synthetic self-edits ----------------------------------------------------------------------


def test_synthetic_texts_attach_to_their_passages(tmp_path):
    passages = fictional_passages(6)
    lines = [{"context_id": p["id"], "text": f"Facts about {p['title']}."} for p in passages[:4]]
    lines.append({"context_id": "not-loaded", "text": "A passage of another dataset."})
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    dm = KnowledgeDataModule("builtin:fictional:6", train_size=2, val_size=2, test_size=2, synthetic=str(path))
    dm.setup()
    records = [r for split in (dm.train_set, dm.val_set, dm.test_set) for r in split]
    by_id = {p["id"]: p for p in passages}
    for r in records:
        expected = f"Facts about {by_id[r['id']]['title']}." if r["id"] in {x["context_id"] for x in lines} else ""
        assert r["synthetic"] == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"context_id": "fictional-0-0"}\n', r"line 1: needs a string 'context_id' and a non-empty string 'text'"),
        (
            '{"context_id": "fictional-0-0", "text": "a"}\n{"context_id": "fictional-0-0", "text": "b"}\n',
            r"line 2: second text for context_id 'fictional-0-0'",
        ),
        ('{"context_id": "elsewhere", "text": "a"}\n', r"no context_id matches a passage of builtin:fictional:6"),
        ('{"context_id": \n', r"synthetic\.jsonl: line 1: invalid JSON"),
    ],
)
def test_bad_synthetic_file_is_named(tmp_path, content, message):
    path = tmp_path / "synthetic.jsonl"
    path.write_text(content)
    dm = KnowledgeDataModule("builtin:fictional:6", train_size=2, val_size=2, test_size=2, synthetic=str(path))
    with pytest.raises(ValueError, match=message):
        dm.setup()
