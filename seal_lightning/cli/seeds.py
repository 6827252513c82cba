"""``seal seeds DIR DIR [DIR ...]``: one config trained under several seeds, its effect with the spread
between seeds.

Each DIR is a run's ``trainer.default_root_dir`` or what ``seal collect`` made of it, validated before
fit (round 0) and after every round on the same contexts. Another seed samples other self-edits and
trains other inner adapters, so every run is paired with its own round 0: for each condition of
round R and each metric, the difference to the run's own ``base_self_edit`` and ``passage``, per
context. Reported per round: each seed's paired mean, the mean over seeds and their standard
deviation (how much the training seed moves the effect), and the pooled estimate, whose standard
error and bootstrap interval are over contexts of the per-context difference averaged over seeds.
Prints a markdown table; ``--out`` writes the JSON.

``--baselines FILE`` pools a test split instead: each positional argument is then a seed's ``seal
test`` results.json (its ``self_edit`` rows, reported as round ``test``), and FILE one ``seal test``
of the untrained policy (``passage``, ``base_self_edit``) that every seed is paired with; all of
them scored with the same ``model.eval.seed``, so they share contexts, questions and inner seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ..evaluation.results import paired
from ..evaluation.rounds import ROUND0, ROUNDS_DIR, read_rounds
from .collect import format_paired

BASELINES = ("base_self_edit", "passage")


def _table(record: dict) -> dict[str, dict[str, dict]]:
    """``{condition: {context id: row}}`` of one validation record."""
    table: dict[str, dict[str, dict]] = {}
    for row in record["per_context"]:
        table.setdefault(row["condition"], {})[row["context_id"]] = row
    return table


def _tables(run: Path, baselines: dict | None) -> dict[int | str, dict]:
    """A run's tables by round; with the ``baselines`` table, round 0 is it and ``run`` a test's results.json."""
    if baselines is None:
        return {r: _table(record) for r, record in read_rounds(run).items()}
    return {0: baselines, "test": _table(json.loads(run.read_text()))}


def _where(run: Path, r: int | str) -> str:
    return str(run) if r == "test" else f"{run}/{ROUNDS_DIR}/val_round{r}.json"


def _differences(
    run: Path, tables: dict, r: int | str, condition: str, baseline: str, metric: str, contexts: list[str]
) -> list[float]:
    """Per context: ``condition`` in round ``r`` minus ``baseline`` in the run's own round 0."""
    if condition not in tables[r]:
        raise ValueError(f"{_where(run, r)}: no {condition} rows, which the first run has")
    rows, base = tables[r][condition], tables[0][baseline]
    if missing := sorted(set(contexts) - set(rows)):
        raise ValueError(f"{_where(run, r)}: no {condition} rows for contexts {missing[:3]} of the baselines")
    return [rows[c][metric] - base[c][metric] for c in contexts]


def _paired(differences: list[float]) -> dict:
    return paired(differences, [0.0] * len(differences))


def seeds(runs: list[Path], metrics: tuple[str, ...] = ("f1", "contains"), baselines: Path | None = None) -> dict:
    """Per round and condition, each metric's difference to each baseline over the seeds (see the module)."""
    if len(runs) < 2:
        raise ValueError(f"seal seeds needs two runs or more, got {len(runs)}")
    found = {}  # run -> round -> condition -> context -> row
    shared_round0 = _table(json.loads(baselines.read_text())) if baselines else None
    for run in runs:
        found[run] = _tables(run, shared_round0)
        if 0 not in found[run]:
            raise FileNotFoundError(
                f"{run}/{ROUNDS_DIR}/{ROUND0}: none; each seed needs its own round 0 "
                "(seal fit --validate_before_fit true)"
            )
        missing = [b for b in BASELINES if b not in found[run][0]]
        if missing:
            where = baselines or f"{run}/{ROUNDS_DIR}/{ROUND0}"
            raise ValueError(f"{where}: no {', '.join(missing)} rows to pair with")
    first = found[runs[0]]
    contexts = sorted(first[0]["base_self_edit"])
    for run in runs[1:]:
        if sorted(found[run][0]["base_self_edit"]) != contexts:
            raise ValueError(f"{run}: other validation contexts than {runs[0]}; seeds must share them")
    shared = ["test"] if baselines else sorted(set.intersection(*(set(f) for f in found.values())) - {0})
    rounds: dict[str, dict] = {}
    for r in [0, *shared]:
        # a test scores its seeds' shared conditions (one seed may add its own passage row, say)
        for condition in [c for c in first[r] if not baselines or all(c in found[run][r] for run in runs)]:
            if r == 0 and condition == "base_self_edit":  # the reference itself
                continue
            entry = rounds.setdefault(str(r), {}).setdefault(condition, {})
            for metric in metrics:
                for baseline in BASELINES:
                    if r == 0 and condition == baseline:
                        continue
                    diffs = [_differences(run, found[run], r, condition, baseline, metric, contexts) for run in runs]
                    per_seed = [_paired(d) for d in diffs]
                    means = [p["mean"] for p in per_seed]
                    entry[f"{metric}_vs_{baseline}"] = {
                        "per_seed": per_seed,
                        "mean": statistics.mean(means),
                        "seed_sd": statistics.stdev(means),
                        "pooled": _paired([sum(values) / len(values) for values in zip(*diffs)]),
                    }
    out = {"runs": [str(run) for run in runs], "contexts": len(contexts), "rounds": rounds}
    return {**out, "baselines": str(baselines)} if baselines else out


def markdown(result: dict, metrics: tuple[str, ...] = ("f1", "contains")) -> str:
    """A row per round and condition; per metric and baseline: mean over seeds ± their standard
    deviation, then the pooled mean ± s.e. [95% interval] over contexts."""
    columns = [f"{m}_vs_{b}" for m in metrics for b in BASELINES]
    lines = [
        f"{len(result['runs'])} seeds, {result['contexts']} contexts: mean over seeds ± s.d. between seeds; "
        "pooled mean ± s.e. [bootstrap 95%] over contexts",
        "",
        "| condition | " + " | ".join(f"Δ{c.replace('_vs_', ' vs ')}" for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for r, conditions in result["rounds"].items():
        for condition, entry in conditions.items():
            cells = []
            for column in columns:
                if column not in entry:
                    cells.append("")
                    continue
                e = entry[column]
                cells.append(f"{e['mean']:+.3f} ± {e['seed_sd']:.3f}; {format_paired(e['pooled'])}")
            label = "test" if r == "test" else f"round {r}"
            lines.append(f"| {condition} ({label}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="seal seeds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of one config, one per seed")
    parser.add_argument("--baselines", type=Path, help="a test of the untrained policy: RUNS are then test results")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    result = seeds(args.runs, baselines=args.baselines)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
