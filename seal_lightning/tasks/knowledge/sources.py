"""Knowledge-incorporation passages from builtin SQuAD, generated fictional passages, Hugging Face or local files.

Every source yields normalized records::

    {"id": str, "title": str, "context": str,
     "questions": [{"question": str, "answers": [str, ...]}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

from .fictional import fictional_passages

SQUAD_SUBSET = Path(__file__).resolve().parents[2] / "assets" / "squad_subset.json"
BUILTINS = "builtin:squad, builtin:fictional, builtin:fictional:N, hf:NAME[:SPLIT]"
FIELD = "data.init_args.path"  # the config field that names a passage source


def load_passages(path: str) -> list[dict]:
    """Load normalized passages from ``builtin:squad``, ``builtin:fictional[:N]``, ``hf:NAME[:SPLIT]``,
    or a local JSON (list of records, or SQuAD v1.1's own ``{"data": [...]}`` file such as
    ``train-v1.1.json``) / JSONL (one record per line) file."""
    if path == "builtin:squad":
        return _normalize(_read_file(SQUAD_SUBSET), str(SQUAD_SUBSET), "squad")
    if path == "builtin:fictional" or path.startswith("builtin:fictional:"):
        count = path.removeprefix("builtin:fictional").removeprefix(":") or "200"
        if not count.isdigit():
            raise ValueError(f"{path!r}: expected builtin:fictional:N with a whole number N")
        return _normalize([(f"record {i}", r) for i, r in enumerate(fictional_passages(int(count)))], path, "fictional")
    if path.startswith("builtin:"):
        raise ValueError(f"unknown builtin dataset {path!r}; choose one of: {BUILTINS}")
    if path.startswith("hf:"):
        return _load_hf(path)
    return _normalize(_read_file(Path(path)), path, Path(path).stem)


def load_synthetic(path: str) -> dict[str, str]:
    """``{context_id: text}`` from a JSON / JSONL file of ``{"context_id", "text"}`` records: self-edits
    written elsewhere (e.g. by a larger model), scored as the ``synthetic`` evaluation condition."""
    texts: dict[str, str] = {}
    for where, record in _read_file(Path(path)):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        context_id, text = record.get("context_id"), record.get("text")
        if not isinstance(context_id, str) or not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: {where}: needs a string 'context_id' and a non-empty string 'text'")
        if context_id in texts:
            raise ValueError(f"{path}: {where}: second text for context_id {context_id!r}")
        texts[context_id] = text
    return texts


def _read_file(file: Path) -> list[tuple[str, Any]]:
    """``(location, record)`` pairs from a JSON list or a JSONL file, with decoding errors located."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (or use a builtin dataset: {BUILTINS})")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not valid UTF-8 at byte offset {err.start}") from None
    if file.suffix == ".jsonl":
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        return [(f"line {n}", _parse_json(line, f"{file}: line {n}")) for n, line in lines]
    data = _parse_json(text, str(file))
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return _squad_v1(data["data"], file)
    if not isinstance(data, list):
        raise ValueError(f"{file}: top level must be a list of records, got {type(data).__name__}")
    return [(f"record {i}", record) for i, record in enumerate(data)]


def _squad_v1(articles: list, file: Path) -> list[tuple[str, Any]]:
    """SQuAD v1.1's file layout (articles of paragraphs of ``qas``) as one record per paragraph."""
    items = []
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise ValueError(f"{file}: data[{a}]: a SQuAD v1.1 article needs a list 'paragraphs'")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{file}: {where}: needs 'context' and a list 'qas'")
            questions = [
                {
                    "question": q.get("question"),
                    "answers": list(dict.fromkeys(ans["text"] for ans in q.get("answers", []))),
                }
                for q in paragraph["qas"]
            ]
            record = {
                "id": f"{file.stem}-{a}-{p}",
                "title": article.get("title", ""),
                "context": paragraph.get("context"),
            }
            items.append((where, {**record, "questions": questions}))
    return items


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def _load_hf(path: str) -> list[dict]:
    """Group the rows of a SQuAD-format Hugging Face dataset by context."""
    name, _, split = path.removeprefix("hf:").partition(":")
    split = split or "validation"
    grouped: dict[str, dict] = {}
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline and not cached, no such dataset or split: datasets' many errors
        raise RuntimeError(
            f"{FIELD}={path!r}: datasets could not load {name!r} split {split!r} ({type(err).__name__}: {err}); "
            f"with no hub, point {FIELD} at a local file: SQuAD's own train-v1.1.json, or a JSON/JSONL file "
            "of {id, title, context, questions} records"
        ) from err
    for row in rows:
        record = grouped.setdefault(
            row["context"],
            {"id": f"{name}-{split}-{len(grouped)}", "title": row["title"], "context": row["context"], "questions": []},
        )
        answers = list(dict.fromkeys(row["answers"]["text"]))  # drop repeated annotator answers
        record["questions"].append({"question": row["question"], "answers": answers})
    return _normalize([(f"passage {i}", r) for i, r in enumerate(grouped.values())], path, name)


def _normalize(items: list[tuple[str, Any]], source: str, stem: str) -> list[dict]:
    """Validate records and normalize them; errors name ``source``, the record and the field."""
    records, seen = [], {}
    for index, (where, record) in enumerate(items):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: {where}: expected an object, got {type(record).__name__}")
        record_id = record.get("id", f"{stem}-{index}")
        if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
            raise ValueError(f"{source}: {where}: field 'id' must be a string")
        record_id = str(record_id)
        prefix = f"{source}: {where} (id {record_id!r})"
        if record_id in seen:
            raise ValueError(f"{prefix}: duplicate id, first used by {seen[record_id]}")
        seen[record_id] = where
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise ValueError(f"{prefix}: field 'title' must be a string")
        context = _text(record, "context", prefix)
        questions = record.get("questions")
        if questions is None:
            raise ValueError(f"{prefix}: field 'questions' is missing")
        if not isinstance(questions, list) or not questions:
            raise ValueError(f"{prefix}: field 'questions' must be a non-empty list")
        normalized = [_question(q, f"{prefix}: questions[{j}]") for j, q in enumerate(questions)]
        records.append({"id": record_id, "title": title, "context": context, "questions": normalized})
    return records


def _question(question: Any, prefix: str) -> dict:
    if not isinstance(question, dict):
        raise ValueError(f"{prefix}: expected an object, got {type(question).__name__}")
    text = _text(question, "question", prefix)
    answers = question.get("answers", question.get("answer"))
    if answers is None:
        raise ValueError(f"{prefix}: field 'answer' or 'answers' is missing")
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{prefix}: field 'answers' must be a string or a non-empty list of strings")
    for answer in answers:
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{prefix}: field 'answers' has an empty or non-string answer: {answer!r}")
    return {"question": text, "answers": answers}


def _text(record: dict, field: str, prefix: str) -> str:
    value = record.get(field)
    if value is None:
        raise ValueError(f"{prefix}: field {field!r} is missing")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{prefix}: field {field!r} must be a non-empty string")
    return value
