"""configs/paper_squad.yaml: the paper's setting, and its CPU twin run end to end (tiny model, CPU,
hf generation; sizes shrunk on the command line), with its data source, SQuAD train through
``datasets``, answered by a stand-in for the hub; and the data sources it relies on."""

import json

import datasets
import pytest
import yaml
from conftest import CONFIGS

from seal_lightning.cli import main
from seal_lightning.tasks.knowledge import KnowledgeDataModule, fictional_passages, load_passages

PAPER = CONFIGS / "paper_squad.yaml"
TWIN = ["--model.model", "tiny-random-llama", "--trainer.accelerator", "cpu", "--model.generation", "hf"]
SHRUNK = [  # sizes only: what a round costs, not what it does
    *("--trainer.max_epochs", "1", "--data.init_args.train_size", "2", "--data.init_args.batch_size", "2"),
    *("--data.init_args.val_size", "1", "--data.init_args.test_size", "1", "--model.outer.k", "2"),
    *("--model.inner.epochs", "1", "--model.inner.repeats", "2", "--model.sampling.max_new_tokens", "24"),
    *("--model.inner.answer_tokens", "8", "--model.outer.sft_batch_size", "2", "--model.outer.sft_epochs", "1"),
]


def hub_rows(n: int) -> list[dict]:
    """SQuAD's rows on the hub (one per question) for ``n`` invented passages."""
    return [
        {"id": f"{i}-{j}", "title": p["title"], "context": p["context"], "question": q["question"]}
        | {"answers": {"text": q["answers"], "answer_start": [0] * len(q["answers"])}}
        for i, p in enumerate(fictional_passages(n))
        for j, q in enumerate(p["questions"])
    ]


def test_the_config_is_the_papers_setting():
    config = yaml.safe_load(PAPER.read_text())
    model, data = config["model"], config["data"]["init_args"]
    assert model["model"] == "Qwen/Qwen2.5-7B" and model["dtype"] == "bfloat16" and model["generation"] == "vllm"
    assert {k: model["inner"][k] for k in ("r", "alpha", "lr", "epochs", "batch_size", "repeats")} == {
        "r": 32,
        "alpha": 64,
        "lr": 1e-3,
        "epochs": 10,
        "batch_size": 1,
        "repeats": 3,
    }
    assert model["outer"]["k"] == 5 and data["train_size"] == 50 and config["trainer"]["max_epochs"] == 2
    assert model["sampling"] == {"max_new_tokens": 8192, "temperature": 1.0, "top_p": 0.95}
    assert data["path"] == "hf:rajpurkar/squad:train" and config["trainer"]["strategy"] == "ddp"
    assert model["vllm"]["max_lora_rank"] >= model["lora"]["r"] + model["inner"]["r"]


def test_its_cpu_twin_runs_end_to_end(tmp_path, monkeypatch, capsys):
    calls = []

    def hub(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(hub_rows(6))

    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.chdir(tmp_path)
    bar = ["--trainer.enable_progress_bar", "true", "--trainer.callbacks+=TQDMProgressBar"]
    main(["fit", "--config", str(PAPER), *TWIN, *SHRUNK, *bar])
    err = capsys.readouterr().err
    assert "inner updates" in err and "8/8" in err  # 2 passages x K=2 x inner.repeats 2
    assert calls == [("rajpurkar/squad", "train")]  # the config's own source, no other
    run = tmp_path / "checkpoints" / "paper_squad"
    ledger = [json.loads(line) for line in (run / "self_edits.jsonl").read_text().splitlines()]
    assert len(ledger) == 2 * 2 and {r["context_id"].split("-")[0] for r in ledger} == {"rajpurkar/squad"}
    rounds = json.loads((run / "rounds.json").read_text())
    assert {"no_update", "passage", "base_self_edit", "self_edit (round 1)"} <= set(rounds["summary"])
    saved = yaml.safe_load(next(run.glob("logs/version_0/config.yaml")).read_text())
    assert saved["trainer"]["strategy"] == "ddp" and saved["model"]["dtype"] == "bfloat16"
    assert saved["data"]["init_args"]["eval_path"] == "builtin:squad"  # evaluated on SQuAD dev passages


def test_an_unreachable_hub_names_the_field_and_the_way_out(monkeypatch):
    def offline(name, split):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"data.init_args.path='hf:rajpurkar/squad:train'.*train-v1.1.json"):
        load_passages("hf:rajpurkar/squad:train")


def test_squad_v1_files_are_read_as_squad_publishes_them(tmp_path):
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "Ann",
                "paragraphs": [
                    {"context": "Ann met Bob.", "qas": [{"id": "q1", "question": "Who met Bob?", "answers": []}]},
                    {"context": "Cy is tall.", "qas": []},
                ],
            }
        ],
    }
    squad["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [{"text": "Ann", "answer_start": 0}] * 2
    (tmp_path / "train-v1.1.json").write_text(json.dumps(squad))
    with pytest.raises(ValueError, match=r"train-v1.1.json: data\[0\].paragraphs\[1\] .*'questions' must be"):
        load_passages(str(tmp_path / "train-v1.1.json"))
    squad["data"][0]["paragraphs"][1]["qas"] = [{"question": "Who is tall?", "answers": [{"text": "Cy"}]}]
    (tmp_path / "train-v1.1.json").write_text(json.dumps(squad))
    records = load_passages(str(tmp_path / "train-v1.1.json"))
    assert records == [
        {"id": "train-v1.1-0-0", "title": "Ann", "context": "Ann met Bob."}
        | {"questions": [{"question": "Who met Bob?", "answers": ["Ann"]}]},
        {"id": "train-v1.1-0-1", "title": "Ann", "context": "Cy is tall."}
        | {"questions": [{"question": "Who is tall?", "answers": ["Cy"]}]},
    ]


def test_eval_path_holds_the_evaluation_passages_out_of_another_source():
    dm = KnowledgeDataModule("builtin:fictional:30", eval_path="builtin:squad", train_size=5, val_size=3, test_size=2)
    dm.setup("fit")
    squad = {p["id"] for p in load_passages("builtin:squad")}
    assert set(dm.val_set["id"]) | set(dm.test_set["id"]) <= squad and len(dm.val_set) == 3 and len(dm.test_set) == 2
    assert not set(dm.train_set["id"]) & squad and len(dm.train_set) == 5
    with pytest.raises(ValueError, match=r"builtin:fictional:4: 4 passages, but train_size=5 needs 5"):
        KnowledgeDataModule("builtin:fictional:4", eval_path="builtin:squad", train_size=5).setup("fit")
    with pytest.raises(ValueError, match=r"share passage ids"):
        KnowledgeDataModule("builtin:squad", eval_path="builtin:squad", train_size=5).setup("fit")
