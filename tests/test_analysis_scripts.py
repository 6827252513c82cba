"""scripts/passage_copies.py and scripts/self_edit_overlap.py on the builtin invented facts."""

import importlib.util
import json
import subprocess
import sys

from conftest import ROOT

from seal_lightning.tasks.knowledge import KnowledgeTask, load_passages
from seal_lightning.tasks.knowledge.task import split_sentences


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_verbatim_copy_restates_every_sentence_and_a_stranger_none():
    overlap = _module("self_edit_overlap").overlap
    passage = load_passages("builtin:fictional:1")[0]["context"]
    assert overlap(passage, passage) == (1.0, 1.0, len(passage.split()))
    first = passage.split(". ")[0] + "."
    restated, covered, _ = overlap(passage, f"{first}\nThe moon is made of green cheese and nobody minds.")
    assert restated == 0.5 and 0 < covered < 0.5
    assert overlap(passage, "") == (0.0, 0.0, 0)


def test_passage_copies_is_a_synthetic_file_of_each_passage_on_one_line(tmp_path):
    out = tmp_path / "copies.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "passage_copies.py"), "builtin:fictional:3", str(out)], check=True
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    passages = load_passages("builtin:fictional:3")
    assert [r["context_id"] for r in records] == [p["id"] for p in passages]
    task = KnowledgeTask(include_passage=True)
    for record, passage in zip(records, passages):  # one self-edit line, the whole passage, then its sentences
        assert task.lines(record["text"]) == [" ".join(split_sentences(passage["context"]))]
        job = task.inner_job(passage, record["text"], seed=0)
        assert len(job.sequences) == 1 + len(split_sentences(passage["context"]))
        assert job.sequences[0][1] == f"{passage['title']}\n{record['text']}"
