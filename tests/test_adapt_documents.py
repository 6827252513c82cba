"""`seal adapt`'s documents: the sources it reads, the errors that name the file, and long documents
split into passages without losing a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seal_lightning.adapt import attach_questions, load_documents, passages


def test_a_folder_of_text_files_is_one_document_per_file(tmp_path):
    (tmp_path / "river_notes.txt").write_text("The Velm river runs north.\n")
    (tmp_path / "b.md").write_text("# Heading\n\nA second document.")
    (tmp_path / "skip.json").write_text("{}")
    docs = load_documents(str(tmp_path))
    assert [(d["id"], d["title"]) for d in docs] == [("b", "b"), ("river_notes", "river notes")]
    assert docs[1]["text"] == "The Velm river runs north." and docs[1]["questions"] == []


def test_json_and_jsonl_records_and_a_data_source_with_its_questions(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"title": "A", "text": "one"}\n\n{"id": 7, "title": "B", "text": "two"}\n')
    assert [(d["id"], d["title"], d["text"]) for d in load_documents(str(tmp_path / "d.jsonl"))] == [
        ("d-0", "A", "one"),
        ("7", "B", "two"),
    ]
    docs = load_documents("builtin:fictional:5", limit=3)
    assert len(docs) == 3 and all(d["questions"] and d["text"] for d in docs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '[{"title": "A", "text": "  "}]',
            r"record 0: field 'text' must be a non-empty string \(the document is empty\)",
        ),
        ('[{"title": "A", "text": "x"}, {"id": "docs-0", "text": "y"}]', "record 1: duplicate id 'docs-0'"),
        ('[{"title": 3, "text": "x"}]', "record 0: field 'title' must be a string"),
        ("[1]", "record 0: expected an object"),
        ('[{"title": "A"', "invalid JSON at line 1"),
    ],
)
def test_bad_records_name_the_file_and_record(tmp_path, content, message):
    path = tmp_path / "docs.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}: .*{message}" if "JSON" not in message else message):
        load_documents(str(path))


def test_empty_and_non_utf8_files_and_an_unreadable_folder_are_named(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("fine")
    (folder / "b.txt").write_text("\n \n")
    with pytest.raises(ValueError, match=f"{folder / 'b.txt'}: the document is empty"):
        load_documents(str(folder))
    (folder / "b.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match=f"{folder / 'b.txt'}: not valid UTF-8 at byte offset 3"):
        load_documents(str(folder))
    with pytest.raises(ValueError, match=f"{tmp_path}: no .txt or .md files"):
        load_documents(str(tmp_path))

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(ValueError, match=f"{folder}: cannot list the folder \\(Permission denied\\)"):
        load_documents(str(folder))


def test_questions_attach_to_documents_by_id_or_title(tmp_path):
    docs = [
        {"id": "d1", "title": "Velm", "text": "x", "questions": []},
        {"id": "d2", "title": "", "text": "y", "questions": []},
    ]
    file = tmp_path / "q.jsonl"
    file.write_text(
        json.dumps({"document": "Velm", "question": "Which way?", "answer": "north"})
        + "\n"
        + json.dumps({"document": "d2", "question": "What?", "answers": ["y", "why"]})
    )
    attach_questions(docs, str(file))
    assert docs[0]["questions"] == [{"question": "Which way?", "answers": ["north"]}]
    assert docs[1]["questions"] == [{"question": "What?", "answers": ["y", "why"]}]
    file.write_text(json.dumps({"document": "nope", "question": "Q", "answer": "a"}))
    with pytest.raises(
        ValueError, match=f"{file}: line 1: field 'document' must name a document's id or title, got 'nope'"
    ):
        attach_questions(docs, str(file))


def test_a_long_document_is_split_into_passages_that_fit_and_keep_every_word():
    sentences = [f"Sentence {i} tells fact number {i} about the town." for i in range(30)]
    text = " ".join(sentences[:12]) + "\n\n" + " ".join(sentences[12:]) + " " + " ".join(["word"] * 40) + "."
    doc = {"id": "long", "title": "Town", "text": text, "questions": [{"question": "Q?", "answers": ["a"]}]}
    fits = lambda t: len(t) <= 120  # noqa: E731  (a stand-in for the prompt's token count)
    parts = passages(doc, fits)
    assert len(parts) > 5 and all(fits(p["context"]) for p in parts)
    assert [p["id"] for p in parts[:2]] == ["long#0", "long#1"] and all(p["questions"] == [] for p in parts)
    assert " ".join(p["context"] for p in parts).split() == text.split()  # nothing dropped, order kept
    assert passages(doc, lambda t: True) == [
        {"id": "long", "title": "Town", "context": text, "questions": doc["questions"]}
    ]
    with pytest.raises(
        ValueError, match="document 'long': the self-edit prompt does not fit the model even with one word"
    ):
        passages(doc, lambda t: False)
