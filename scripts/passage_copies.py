"""Write a ``synthetic`` file whose "self-edit" for each passage is the passage itself, on one line.

Scored as the ``synthetic`` condition with ``model.task.include_passage: true``, it is the control
for a self-edit that restates its passage: the inner update trains on the passage whole (one
sequence, as a one-paragraph self-edit is) and then on its sentences, as every such update does.

    python scripts/passage_copies.py builtin:fictional passage_copies.jsonl
    seal test ... --data.init_args.synthetic passage_copies.jsonl --model.eval.conditions "[synthetic]"
"""

import argparse
import json

from seal_lightning.tasks.knowledge import load_passages
from seal_lightning.tasks.knowledge.task import split_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a data source, as data.init_args.path takes it (builtin:fictional)")
    parser.add_argument("out", help="the JSONL file to write")
    args = parser.parse_args()
    with open(args.out, "w") as f:
        for passage in load_passages(args.source):
            text = " ".join(split_sentences(passage["context"]))
            f.write(json.dumps({"context_id": passage["id"], "text": text}) + "\n")


if __name__ == "__main__":
    main()
