"""How much of each self-edit restates its passage: the share of its sentences found in the passage
(difflib ratio > 0.9 to one of the passage's sentences) and the share of the passage's sentences it
restates, per file, for a run's ledger (``self_edits.jsonl``: every sampled self-edit, and the kept
ones by round) or an evaluation's ``results.json`` / ``val_round*.json`` (its sampled conditions).

    python scripts/self_edit_overlap.py --data builtin:fictional RUN/self_edits.jsonl RUN/evaluations/val_round3.json
"""

import argparse
import difflib
import json
from pathlib import Path

from seal_lightning.outer.ledger import read_ledger
from seal_lightning.tasks.knowledge import load_passages
from seal_lightning.tasks.knowledge.task import split_sentences


def overlap(passage: str, self_edit: str, threshold: float = 0.9) -> tuple[float, float, int]:
    """(share of the self-edit's sentences in the passage, share of the passage's it restates, words)."""
    mine = split_sentences(self_edit.replace("\n", " "))
    theirs = split_sentences(passage)
    if not mine:
        return 0.0, 0.0, 0

    def close(a: str, b: str) -> bool:
        return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() > threshold

    restated = sum(any(close(m, t) for t in theirs) for m in mine) / len(mine)
    covered = sum(any(close(t, m) for m in mine) for t in theirs) / len(theirs)
    return restated, covered, len(self_edit.split())


def groups(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``{label: [(context id, self-edit)]}`` of a ledger (all and kept, per round) or an evaluation."""
    out: dict[str, list[tuple[str, str]]] = {}
    if path.suffix == ".jsonl":
        for r in read_ledger(path):
            out.setdefault(f"round {r['epoch'] + 1}: sampled", []).append((r["context_id"], r["text"]))
            if r.get("kept"):
                out.setdefault(f"round {r['epoch'] + 1}: kept", []).append((r["context_id"], r["text"]))
        return dict(sorted(out.items()))
    for row in json.loads(path.read_text())["per_context"]:
        for text in row.get("texts", []):
            out.setdefault(row["condition"], []).append((row["context_id"], text))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--data", default="builtin:fictional", help="the run's data.init_args.path")
    args = parser.parse_args()
    passages = {p["id"]: p["context"] for p in load_passages(args.data)}
    print("| file | self-edits | n | sentences in the passage | passage sentences restated | words |")
    print("|---|---|---|---|---|---|")
    for path in args.files:
        for label, rows in groups(path).items():
            stats = [overlap(passages[cid], text) for cid, text in rows]
            mean = [sum(s[i] for s in stats) / len(stats) for i in range(3)]
            print(f"| {path.name} | {label} | {len(stats)} | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.0f} |")


if __name__ == "__main__":
    main()
