"""``seal compare NAME=DIR [NAME=DIR ...]``: runs of one config that differ in one setting (the outer
algorithm, the reward), side by side on the same validation contexts.

Each DIR is a run's ``trainer.default_root_dir`` or what ``seal collect`` made of it. Round 0 (the
untrained policy: ``no_update``, ``passage``, ``base_self_edit``) is the same for runs that share a
config and seed, so it is taken from the first run that has one; the others must have the same
contexts or none. Every later round of every run becomes a row ``NAME: condition (round R)`` with
its paired difference to the reference (``base_self_edit``) and to ``passage``; ``versus`` pairs each
run's last round with the first run's, context by context. ``training_reward`` is each run's mean
reward per round, from its ledger. Prints a markdown table; ``--out`` writes the JSON.

``--each-round0`` compares settings that change round 0 itself (inner epochs or learning rate,
``include_passage``, the prompt): every run after the first adds its own round 0 as rows ``NAME:
condition``, paired with the first run's ``base_self_edit`` and ``passage``. A DIR may also be the
``results.json`` of a ``seal validate`` run, read as that run's round 0. ``--max-round R`` drops the
rounds after R, so runs of different lengths meet at the same round in ``versus``. ``--reference
LABEL`` takes the Δ columns against another row (e.g. ``NAME: base_self_edit`` of ``--each-round0``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation.results import paired, summarize
from ..evaluation.rounds import ROUND0, ROUNDS_DIR, read_rounds
from ..outer.ledger import read_ledger
from .collect import format_paired, ledger_summary, summary_markdown


def _rounds(run: Path) -> dict[int, dict]:
    if run.is_file():  # a `seal validate` run's results.json: round 0 of its settings
        return {0: json.loads(run.read_text())}
    if not (found := read_rounds(run)):
        raise FileNotFoundError(
            f"{run}/{ROUNDS_DIR}/val_round*.json: none; is {run} a `seal fit` run (or its `seal collect`)?"
        )
    return found


def training_rewards(run: Path) -> dict[str, dict]:
    """Per round: the ledger's reward statistics (``ledger_summary.json`` or ``self_edits.jsonl``)."""
    if (run / "ledger_summary.json").is_file():
        return json.loads((run / "ledger_summary.json").read_text())
    if (run / "self_edits.jsonl").is_file():
        return ledger_summary(read_ledger(run / "self_edits.jsonl"))
    return {}


def _contexts(record: dict) -> set[str]:
    return {row["context_id"] for row in record["per_context"]}


def compare(
    runs: dict[str, Path],
    metrics: tuple[str, ...] = ("f1", "contains"),
    each_round0: bool = False,
    max_round: int | None = None,
    reference: str | None = None,
) -> dict:
    """The runs' rounds merged into one summary with paired differences (see the module)."""
    rounds = {
        name: {r: record for r, record in _rounds(path).items() if max_round is None or r <= max_round}
        for name, path in runs.items()
    }
    first = next((name for name in runs if 0 in rounds[name]), None)
    if first is None:
        raise ValueError(f"no run has {ROUND0}: validate one of them before fit (--validate_before_fit true)")
    zero = rounds[first][0]
    for name, found in rounds.items():
        if 0 in found and _contexts(found[0]) != _contexts(zero):
            where = runs[name] if runs[name].is_file() else runs[name] / ROUNDS_DIR / ROUND0
            raise ValueError(f"{where}: other validation contexts than {runs[first]}'s")
    rows = list(zero["per_context"])
    last: dict[str, dict[str, dict]] = {}
    for name, found in rounds.items():
        for r, record in found.items():
            if r == 0 and (name == first or not each_round0):
                continue
            labels = record.get("labels", {})
            for row in record["per_context"]:
                label = labels.get(row["condition"], row["condition"])
                rows.append({**row, "condition": f"{name}: {label}" + (f" (round {r})" if r else "")})
                if r:
                    last.setdefault(name, {})[row["context_id"]] = row
    reference = reference or zero.get("reference", "base_self_edit")
    if reference not in (labels := dict.fromkeys(row["condition"] for row in rows)):
        raise ValueError(f"reference {reference!r} is no row of the comparison; rows: {', '.join(labels)}")
    versus = {}
    base = next(iter(runs))
    for name in runs:
        if name == base or name not in last or base not in last:
            continue
        shared = sorted(set(last[name]) & set(last[base]))
        versus[f"{name} - {base}"] = {
            m: paired([last[name][c][m] for c in shared], [last[base][c][m] for c in shared]) for m in metrics
        }
    return {
        "runs": {name: str(path) for name, path in runs.items()},
        "reference": reference,
        "summary": summarize(rows, reference),
        "versus": versus,
        "training_reward": {
            name: {r: v for r, v in training_rewards(path).items() if max_round is None or int(r) <= max_round}
            for name, path in runs.items()
        },
    }


def markdown(result: dict, metrics: tuple[str, ...] = ("f1", "contains")) -> str:
    """The summary as a table (each metric, its paired Δ to the reference and to passage), then each
    run's last round against the first run's, then the training reward per round."""
    lines = [summary_markdown(result["summary"], result["reference"], metrics)]
    for pair, diffs in result["versus"].items():
        cells = [f"{m} {format_paired(d)}" for m, d in diffs.items()]
        lines.append(
            f"\nlast round, {pair} (paired over {next(iter(diffs.values()))['n']} contexts): " + "; ".join(cells)
        )
    lines.append("\ntraining reward per round (mean ± s.e.):")
    for name, per_round in result["training_reward"].items():
        cells = [f"round {r} {v['reward_mean']:+.4f} ± {v['reward_se']:.4f}" for r, v in per_round.items()]
        lines.append(f"- {name}: " + ("; ".join(cells) or "no ledger"))
    return "\n".join(lines)


def _named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIR, e.g. rest_em=results/effect_squad_seed0")
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="seal compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=_named, help="NAME=DIR, the first is the baseline of 'versus'")
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON")
    parser.add_argument(
        "--each-round0",
        action="store_true",
        help="runs differ in round 0 too: each run's round 0 becomes rows of its own",
    )
    parser.add_argument("--max-round", type=int, help="leave out the rounds after this one (runs of different lengths)")
    parser.add_argument(
        "--reference", help="the row the Δ columns are taken against (default: round 0's base_self_edit)"
    )
    args = parser.parse_args(argv)
    result = compare(dict(args.runs), each_round0=args.each_round0, max_round=args.max_round, reference=args.reference)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
