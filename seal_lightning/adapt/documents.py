"""A user's documents for ``seal adapt``: read, checked, and split into passages the policy can read.

A document source is a JSON list / JSONL file of ``{"title", "text"}`` records (``id`` optional;
``context`` is read as ``text`` and ``questions`` are kept, so the project's passage files work too),
a folder of ``.txt`` / ``.md`` files (the title is the file name), or one of the project's data
sources (``builtin:fictional``, ``builtin:squad``, ``hf:NAME``), whose questions come along.
Questions for other documents come from a file of ``{"document", "question", "answers"}`` records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..tasks.knowledge.sources import _question, _read_file, load_passages
from ..tasks.knowledge.task import split_sentences

SUFFIXES = (".txt", ".md")
_PARAGRAPH = re.compile(r"\n\s*\n")


def load_documents(source: str, limit: int | None = None) -> list[dict]:
    """``[{"id", "title", "text", "questions"}]`` from ``source`` (see the module docstring), the first
    ``limit`` of them; a document without text is an error naming its file and record."""
    if source.startswith(("builtin:", "hf:")):
        docs = [{**p, "text": p.pop("context")} for p in load_passages(source)]
    elif Path(source).is_dir():
        docs = _read_folder(Path(source))
    else:
        docs = _read_records(Path(source))
    if not docs:
        raise ValueError(f"{source}: no documents")
    return docs[:limit] if limit else docs


def _read_folder(folder: Path) -> list[dict]:
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())
    except OSError as err:
        raise ValueError(f"{folder}: cannot list the folder ({err.strerror})") from None
    if not files:
        raise ValueError(f"{folder}: no {' or '.join(SUFFIXES)} files")
    docs = []
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as err:
            raise ValueError(f"{file}: cannot read it ({err.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{file}: not valid UTF-8 at byte offset {err.start}") from None
        if not text.strip():
            raise ValueError(f"{file}: the document is empty")
        docs.append({"id": file.stem, "title": file.stem.replace("_", " "), "text": text.strip(), "questions": []})
    return docs


def _read_records(file: Path) -> list[dict]:
    docs, seen = [], set()
    for index, (where, record) in enumerate(_read_file(file)):
        prefix = f"{file}: {where}"
        if not isinstance(record, dict):
            raise ValueError(f"{prefix}: expected an object with 'title' and 'text', got {type(record).__name__}")
        text = record.get("text", record.get("context"))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{prefix}: field 'text' must be a non-empty string (the document is empty)")
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise ValueError(f"{prefix}: field 'title' must be a string")
        doc_id = str(record.get("id", f"{file.stem}-{index}"))
        if doc_id in seen:
            raise ValueError(f"{prefix}: duplicate id {doc_id!r}")
        seen.add(doc_id)
        questions = [_question(q, f"{prefix}: questions[{j}]") for j, q in enumerate(record.get("questions") or [])]
        docs.append({"id": doc_id, "title": title, "text": text.strip(), "questions": questions})
    return docs


def attach_questions(docs: list[dict], file: str) -> None:
    """Add the questions of ``file`` (``{"document": id or title, "question", "answers"}`` records) to
    their documents; a record naming no document is an error."""
    by_name = {d["id"]: d for d in docs} | {d["title"]: d for d in docs if d["title"]}
    for where, record in _read_file(Path(file)):
        prefix = f"{file}: {where}"
        name = record.get("document") if isinstance(record, dict) else None
        if name not in by_name:
            raise ValueError(f"{prefix}: field 'document' must name a document's id or title, got {name!r}")
        by_name[name]["questions"].append(_question(record, prefix))


def passages(doc: dict, fits: Callable[[str], bool]) -> list[dict]:
    """The document as contexts whose self-edit prompt ``fits``: one (with the document's id and
    questions) when it fits, else ``ID#k`` of consecutive paragraphs, sentences or, for an overlong
    sentence, runs of words, packed greedily. Nothing is dropped: the passages hold every word."""
    if fits(doc["text"]):
        return [{"id": doc["id"], "title": doc["title"], "context": doc["text"], "questions": doc["questions"]}]
    if not fits(doc["text"].split()[0]):
        raise ValueError(f"document {doc['id']!r}: the self-edit prompt does not fit the model even with one word")
    units = [u for p in _PARAGRAPH.split(doc["text"]) for u in _units(p.strip(), fits)]
    texts, current = [], ""
    for unit in units:
        joined = f"{current} {unit}".strip()
        if current and not fits(joined):
            texts.append(current)
            joined = unit
        current = joined
    texts.append(current)
    return [
        {"id": f"{doc['id']}#{k}", "title": doc["title"], "context": t, "questions": []} for k, t in enumerate(texts)
    ]


def _units(paragraph: str, fits: Callable[[str], bool]) -> list[str]:
    if fits(paragraph):
        return [paragraph] if paragraph else []
    units = []
    for sentence in split_sentences(paragraph):
        if fits(sentence):
            units.append(sentence)
            continue
        words, run = sentence.split(), []
        for word in words:
            if run and not fits(" ".join([*run, word])):
                units.append(" ".join(run))
                run = []
            run.append(word)
        units.append(" ".join(run))
    return units
