"""``seal adapt``'s output folder: a peft adapter per document, a ledger, the before/after table, and
optionally one model with every update merged in order. Resumable, never overwritten.

``OUT/base/`` is the policy with its LoRA merged (a plain Hugging Face directory): the model every
adapter was trained on. ``OUT/adapters/NNNN_ID/`` loads with
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT/base), OUT/adapters/NNNN_ID)``
and in vLLM (``LLM(OUT/base, enable_lora=True)`` with a ``LoRARequest`` of that folder).
``OUT/ledger.jsonl`` has one record per document, written (fsynced) once its adapter is in place, so
a killed ``seal adapt`` resumes after the last finished group of documents. ``OUT/adapt.json`` holds
the settings; a later call into the same folder with other settings or documents stops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from tqdm import tqdm

from ..evaluation.results import format_table, summarize
from ..lm.lora_io import save_peft
from .teach import Teacher, Update

LEDGER = "ledger.jsonl"


def claim(out: Path, settings: dict) -> None:
    """Make ``out`` this adaptation's folder, or stop when it holds another's."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adapt.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in {**before, **settings} if before.get(k) != settings.get(k))
        if changed:
            raise FileExistsError(
                f"{out} holds an adaptation with other {', '.join(changed)} ({path}); give another --output"
            )
    elif any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no adaptation; give another --output")
    else:
        _write(path, json.dumps(settings, indent=1))


def read_log(path: Path) -> list[dict]:
    """The records of a JSONL log written line by line; a torn last line (a kill mid-write) is cut off
    the file, so the next record starts on a line of its own."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) < len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


def read_ledger(out: Path) -> dict[str, dict]:
    """The finished documents' records by id."""
    return {record["id"]: record for record in read_log(out / LEDGER)}


def adapter_dir(out: Path, index: int, doc_id: str) -> Path:
    return out / "adapters" / f"{index:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '-', doc_id)[:48]}"


def adapt(teacher: Teacher, docs: list[dict], out: Path, group: int = 8, progress: bool = True) -> dict[str, dict]:
    """Every document's adapter and ledger record (those already in the ledger are kept), in groups of
    ``group`` documents trained together; returns the ledger by id."""
    save_base(teacher, out / "base")
    done = read_ledger(out)
    bar = tqdm(total=len(docs), initial=len(done), desc="documents", unit="doc", disable=not progress)
    for start in range(0, len(docs), group):
        chunk = [(i, d) for i, d in enumerate(docs[start : start + group], start) if d["id"] not in done]
        if not chunk:
            continue
        chosen = [d for _, d in chunk]
        parts = [teacher.passages(d) for d in chosen]
        flat = teacher.self_edits([p for ps in parts for p in ps])
        edits, at = [], 0
        for ps in parts:
            edits.append(flat[at : at + len(ps)])
            at += len(ps)
        before = teacher.answers(teacher.base, chosen)
        for (index, doc), passages, update, scores in zip(chunk, parts, teacher.train(chosen, parts, edits), before):
            done[doc["id"]] = _finish(teacher, out, index, doc, passages, update, scores)
            bar.update(1)
    bar.close()
    return done


def _finish(teacher: Teacher, out: Path, index: int, doc: dict, passages, update: Update, before: dict) -> dict:
    """Save the document's adapter, score it, and append its ledger record."""
    record = {"id": doc["id"], "title": doc["title"], "passages": [p["context"] for p in passages]}
    record |= {"self_edits": update.self_edits, "errors": update.errors, "seconds": round(update.seconds, 3)}
    record["adapter"], record["before"], record["after"] = None, before, {}
    if update.adapter is not None:
        target = adapter_dir(out, index, doc["id"])
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_peft(update.adapter, tmp, str((out / "base").resolve()))
        shutil.rmtree(target, ignore_errors=True)  # a group redone after a kill
        tmp.rename(target)
        record["adapter"] = str(target.relative_to(out))
        if doc["questions"] and update.answers is not None:
            record["after"] = teacher.task.grade(doc, update.answers)
        elif doc["questions"]:
            record["after"] = teacher.answers(teacher.updated([update.adapter]), [doc])[0]
    elif doc["questions"]:
        record["after"] = before  # no update took place
    with open(out / LEDGER, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return record


def save_base(teacher: Teacher, directory: Path) -> None:
    """The model the adapters train on, once (atomically: a killed save is redone)."""
    if directory.is_dir():
        return
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    teacher.base.save_pretrained(tmp, safe_serialization=True)
    teacher.tokenizer.save_pretrained(tmp)
    tmp.rename(directory)


def save_merged(teacher: Teacher, adapters: list, directory: Path) -> Path:
    """``base`` with ``adapters`` merged in order, as a plain Hugging Face directory."""
    if directory.exists():
        shutil.rmtree(directory)
    model = teacher.updated(adapters)
    model.save_pretrained(directory, safe_serialization=True)
    teacher.tokenizer.save_pretrained(directory)
    return directory


def table(records: list[dict], labels: dict[str, str] | None = None) -> tuple[dict, str] | None:
    """The paired before/after summary over the documents with questions, and its printed table."""
    rows = [
        {"context_id": r["id"], "condition": condition, **r[key]}
        for key, condition in (("before", "no_update"), ("after", "self_edit"))
        for r in records
        if r["before"]
    ]
    if not rows:
        return None
    summary = summarize(rows, reference="no_update")
    title = f"closed-book questions before and after each document's update ({len(rows) // 2} documents)"
    return summary, format_table(summary, title, labels or {"no_update": "before", "self_edit": "after"})


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
