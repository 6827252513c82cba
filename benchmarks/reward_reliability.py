"""Reward reliability: how much of a self-edit's reward is the self-edit, and how much is inner-loop noise.

N passages x K self-edits are sampled once by the untrained policy (the quickstart's model, LoRA,
inner loop and sampling settings; SQuAD passages, split as the quickstart of 1551db2 split them). Each self-edit's
reward is then measured in 2 * max(R) independent inner runs (different inner seeds: LoRA
initialisation, data order). For each reward (F1 gain, contains gain, and the gain in the gold answers'
teacher-forced mean log-probability per token, ``logprob``) and each number of repeats R
(the reward averaged over R runs, ``model.inner.repeats``), two independent R-averages are compared:

* ``test_retest``: their correlation over all self-edits;
* ``test_retest_within``: the same after subtracting each passage's mean — what best-of-K selects on;
* ``between_share``: the share of within-passage reward variance that lies between the self-edits of
  one passage (signal ReST-EM can select on) rather than between runs of one self-edit (noise);
* ``best_of_k_agreement``: how often both measurements pick the same best self-edit (chance: 1/K).

    python benchmarks/reward_reliability.py [--passages 12] [--k 3] [--repeats 1 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from seal_lightning import InnerConfig, KnowledgeDataModule, PolicyLoRA, SamplingConfig, SEALPolicy
from seal_lightning.cli.run_info import git_state
from seal_lightning.utils import derive_seed

REWARDS = {"f1_gain": "f1", "contains_gain": "contains", "logprob_gain": "logprob"}


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return cov / var if var else math.nan


def centred(rows: list[list[float]]) -> list[float]:
    return [x - sum(row) / len(row) for row in rows for x in row]


def best(row: list[float]) -> int:
    return max(range(len(row)), key=lambda i: (row[i], -i))  # the first best, as ReST-EM's select


def reliability(runs: list[list[list[float]]], repeats: int) -> dict:
    """Figures for rewards averaged over ``repeats`` runs; ``runs[run][passage][self-edit]``."""

    def mean(part: list[list[list[float]]]) -> list[list[float]]:
        return [[sum(r[p][s] for r in part) / len(part) for s in range(len(part[0][p]))] for p in range(len(part[0]))]

    a, b = mean(runs[:repeats]), mean(runs[repeats : 2 * repeats])
    n_runs = len(runs)
    # run-to-run variance of one self-edit, and the variance between a passage's self-edits (means of all runs)
    noise = sum(
        sum((r[p][s] - sum(x[p][s] for x in runs) / n_runs) ** 2 for r in runs) / (n_runs - 1)
        for p in range(len(runs[0]))
        for s in range(len(runs[0][p]))
    ) / sum(len(row) for row in runs[0])
    overall = mean(runs)
    spread = sum(sum((x - sum(row) / len(row)) ** 2 for x in row) / (len(row) - 1) for row in overall) / len(overall)
    signal = max(0.0, spread - noise / n_runs)
    figures = {
        "test_retest": pearson([x for row in a for x in row], [x for row in b for x in row]),
        "test_retest_within": pearson(centred(a), centred(b)),
        "between_share": signal / (signal + noise / repeats) if signal + noise else math.nan,
        "best_of_k_agreement": sum(best(ra) == best(rb) for ra, rb in zip(a, b)) / len(a),
        "chance_agreement": 1 / len(a[0]),
        "noise_variance_one_run": noise,
        "signal_variance": signal,
        "mean_reward": sum(x for row in overall for x in row) / sum(len(row) for row in overall),
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()}  # JSON has no NaN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--passages", type=int, default=12)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/reward_reliability.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start, (commit, dirty) = time.perf_counter(), git_state()  # the code that runs, before anything changes
    policy = SEALPolicy(
        model=args.model,
        lora=PolicyLoRA(r=16, alpha=32),
        inner=InnerConfig(r=32, alpha=64, lr=3e-3, epochs=4, batch_size=4, answer_tokens=24),
        sampling=SamplingConfig(max_new_tokens=128, temperature=0.7, top_p=0.9),
    )
    policy.configure_model()
    data = KnowledgeDataModule(path="builtin:squad", train_size=args.passages, val_size=0, test_size=4)
    data.setup("fit")
    contexts = [dict(c) for c in data.train_set]
    _, edits = policy.rollout.sample(contexts, args.k, seed=0)
    runs = {name: [] for name in REWARDS}
    for run in range(2 * max(args.repeats)):
        baseline, outcomes = policy.rollout.score_updates(contexts, edits, seed=derive_seed("reliability", run))
        for name, metric in REWARDS.items():
            runs[name].append(
                [
                    [0.0 if o.error else o.scores[metric] - before.scores[metric] for o in row]
                    for before, row in zip(baseline, outcomes)
                ]
            )
        print(f"run {run + 1}: {time.perf_counter() - start:.0f} s", flush=True)
    record = {
        "command": "python benchmarks/reward_reliability.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": commit,
        "dirty": dirty,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - start),
        "settings": {
            "model": args.model,
            "passages": args.passages,
            "k": args.k,
            "inner": "quickstart (r 32, lr 3e-3, 4 epochs, batch 4)",
            "sampling": "quickstart (128 tokens, T 0.7, top-p 0.9)",
        },
        "rewards": {name: {str(r): reliability(runs[name], r) for r in args.repeats} for name in REWARDS},
        "runs": runs,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    for name, by_repeats in record["rewards"].items():
        for r, figures in by_repeats.items():
            shown = {k: "n/a" if v is None else f"{v:.2f}" for k, v in figures.items()}
            print(
                f"{name} R={r}: test_retest {shown['test_retest']}, within {shown['test_retest_within']}, "
                f"between_share {shown['between_share']}, best-of-K agreement {shown['best_of_k_agreement']} "
                f"(chance {shown['chance_agreement']})"
            )


if __name__ == "__main__":
    main()
