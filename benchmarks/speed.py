"""End-to-end self-edit throughput and reward agreement: an older commit against this checkout, side by side.

    python benchmarks/speed.py [--before f77a069] [--passages 8] [--k 3] [--out results/speed.json]

Each path runs the quickstart's E-step (SmolLM2-135M, policy LoRA r=16, inner LoRA r=32 for 4 epochs
at batch 4, lr 3e-3, 16-token answers, a 4 GiB inner memory budget, 128-token self-edits at T=0.7,
``builtin:fictional``), in fp32 on both paths (``--dtype auto`` lets the new path use bf16 where it
is fast): ``old`` from a git worktree of ``--before``, ``new`` from this checkout. Each runs in its
own process, one after the other. On N training passages each path

* samples K self-edits per passage (``sample`` seconds);
* scores the **old path's** self-edits, one inner update each: pre-update answers, inner training,
  post-update answers (``score`` seconds). The rewards (F1 and contains gain, as the E-step computes
  them) of the two paths are compared: ``reward correlation`` (Pearson, F1 gain) and the mean
  absolute difference;
* self-edits scored per second = N K / (sample + score seconds); ``end-to-end speedup`` is the new
  rate over the old.

Also: greedy generation tok/s at batch 16 (16 questions x 24 tokens) on each path's frozen copy, and
inner-training MFU (FLOPs/token = 4 N_base + 6 N_lora) against the bf16 and fp32 matmul peaks
measured in this run. ``--before none`` runs this checkout on both sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from inner_loop import matmul_peak  # noqa: E402
from reward_reliability import pearson  # noqa: E402


def run_path(args: argparse.Namespace) -> dict:
    """One path, in this process, with the seal_lightning found on the path (see ``main``)."""
    import seal_lightning
    from seal_lightning import InnerConfig, KnowledgeDataModule, PolicyLoRA, SamplingConfig, SEALPolicy
    from seal_lightning.generation.hf import generate

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inner = dict(r=32, alpha=64, lr=3e-3, epochs=4, batch_size=4, answer_tokens=16, memory_budget=4.0)
    explicit = {}
    if args.fp32:
        explicit = {"dtype": "float32"}
        inner["dtype"] = "float32"
    inner = {k: v for k, v in inner.items() if k in {f.name for f in dataclasses.fields(InnerConfig)}}
    policy = SEALPolicy(
        model=args.model,
        lora=PolicyLoRA(r=16, alpha=32),
        inner=InnerConfig(**inner),
        sampling=SamplingConfig(max_new_tokens=128, temperature=0.7, top_p=0.9),
        **explicit,
    )
    policy.configure_model()
    rollout, tokenizer = policy.rollout, policy.tokenizer
    data = KnowledgeDataModule(path="builtin:fictional", train_size=args.passages, val_size=0, test_size=4)
    data.setup("fit")
    contexts = [dict(c) for c in data.train_set]

    frozen = rollout.frozen_copy()
    questions = [q for c in contexts for q in rollout.question_prompts(c)][:16]
    generate(frozen, tokenizer, questions[:2], max_new_tokens=2)  # warm up: pages the weights in
    start = time.perf_counter()
    generate(frozen, tokenizer, questions, max_new_tokens=24, batch_size=16)
    tok_s = len(questions) * 24 / (time.perf_counter() - start)
    n_base = sum(p.numel() for p in frozen.parameters())
    n_lora = sum(
        32 * (m.in_features + m.out_features)
        for m in frozen.modules()
        if isinstance(m, torch.nn.Linear) and m is not frozen.get_output_embeddings()
    )
    dtype = str(next(frozen.parameters()).dtype).removeprefix("torch.")
    del frozen

    start = time.perf_counter()
    _, edits = rollout.sample(contexts, args.k, seed=0)
    sampled = time.perf_counter() - start
    if args.edits:
        edits = json.loads(Path(args.edits).read_text())["edits"]
    start = time.perf_counter()
    baseline, outcomes = rollout.score_updates(contexts, edits, seed=0)
    scored = time.perf_counter() - start
    train = sum(o.result.extra["train_seconds"] for row in outcomes for o in row if o.result is not None)
    jobs = [rollout.task.inner_job(c, e, 0) for c, row in zip(contexts, edits) for e in row if rollout.task.lines(e)]
    tokens = 4 * sum(len(tokenizer(text)["input_ids"]) for job in jobs for _, text in job.sequences)  # 4 epochs
    return {
        "source": seal_lightning.__file__,
        "dtype": dtype,
        "sample_seconds": round(sampled, 1),
        "score_seconds": round(scored, 1),
        "train_seconds": round(train, 1),
        "self_edits_per_second": len(contexts) * args.k / (sampled + scored),
        "generation_tok_s_batch16": round(tok_s, 1),
        "train_flops_per_second": tokens / train * (4 * n_base + 6 * n_lora),
        "failed": sum(o.error is not None for row in outcomes for o in row),
        "edits": edits,
        "rewards": {
            metric: [
                0.0 if o.error else o.scores[metric] - before.scores[metric]
                for before, row in zip(baseline, outcomes)
                for o in row
            ]
            for metric in ("f1", "contains")
        },
    }


def spawn(tree: Path, args: argparse.Namespace, out: Path, fp32: bool, edits: Path | None) -> dict:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "speed.py"),
        "--path-out",
        str(out),
        "--model",
        args.model,
        "--passages",
        str(args.passages),
        "--k",
        str(args.k),
        "--threads",
        str(args.threads),
    ]
    command += ["--fp32"] * fp32 + (["--edits", str(edits)] if edits else [])
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    subprocess.run(command, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="f77a069", help="revision of the old path ('none': this checkout)")
    parser.add_argument("--dtype", choices=["float32", "auto"], default="float32", help="the new path's inner dtype")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--path-out", help=argparse.SUPPRESS)  # internal: run one path, write it here
    parser.add_argument("--fp32", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--edits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.path_out:
        Path(args.path_out).write_text(json.dumps(run_path(args)))
        return
    from seal_lightning.cli.run_info import git_state

    torch.set_num_threads(args.threads)
    commit, dirty = git_state()
    peaks = {
        name: matmul_peak(torch.device("cpu"), dtype)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    work = Path(tempfile.mkdtemp(prefix="seal-speed-"))
    old_tree = ROOT
    try:
        if args.before != "none":
            old_tree = work / "before"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(old_tree), args.before],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        old = spawn(old_tree, args, work / "old.json", fp32=True, edits=None)
        new = spawn(ROOT, args, work / "new.json", fp32=args.dtype == "float32", edits=work / "old.json")
    finally:
        if args.before != "none":
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    paths = {"old": old, "new": new}
    for f in paths.values():
        f["mfu_vs_bf16_peak"] = f["train_flops_per_second"] / peaks["bf16"]
        f["mfu_vs_fp32_peak"] = f["train_flops_per_second"] / peaks["fp32"]
    agreement = {}
    for metric in ("f1", "contains"):
        a, b = old["rewards"][metric], new["rewards"][metric]
        r = pearson(a, b)
        agreement[metric] = {
            "correlation": None if math.isnan(r) else r,
            "mean_abs_difference": sum(abs(x - y) for x, y in zip(a, b)) / len(a),
        }
    speedup = new["self_edits_per_second"] / old["self_edits_per_second"]
    print(
        f"\nmatmul peak GFLOP/s: fp32 {peaks['fp32'] / 1e9:.0f}, bf16 {peaks['bf16'] / 1e9:.0f}; "
        f"{args.passages} passages x K={args.k}, {args.threads} threads"
    )
    print(
        f"{'path':<5}{'dtype':>10}{'sample s':>10}{'score s':>9}{'train s':>9}{'answer+ s':>11}{'edits/s':>9}"
        f"{'gen tok/s':>11}{'MFU fp32':>10}"
    )
    for name, f in paths.items():
        rest = round(f["score_seconds"] - f["train_seconds"], 1)  # answers, log-probs, the memory plan
        print(
            f"{name:<5}{f['dtype']:>10}{f['sample_seconds']:>10}{f['score_seconds']:>9}{f['train_seconds']:>9}"
            f"{rest:>11}{f['self_edits_per_second']:>9.3f}{f['generation_tok_s_batch16']:>11}"
            f"{f['mfu_vs_fp32_peak']:>10.0%}"
        )
    for metric, a in agreement.items():
        shown = "n/a" if a["correlation"] is None else f"{a['correlation']:.3f}"
        print(f"{metric} gain: correlation {shown}, mean |difference| {a['mean_abs_difference']:.4f}")
    print(f"generation speedup batch 16: {new['generation_tok_s_batch16'] / old['generation_tok_s_batch16']:.2f}")
    print(f"end-to-end speedup: {speedup:.2f}")
    correlation = agreement["f1"]["correlation"]
    print(f"reward correlation: {'n/a' if correlation is None else round(correlation, 3)}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "commit": commit,
                    "dirty": dirty,
                    "before": args.before,
                    "new_dtype": args.dtype,
                    "threads": args.threads,
                    "passages": args.passages,
                    "k": args.k,
                    "matmul_peak_flops": peaks,
                    "paths": paths,
                    "speedup": speedup,
                    "reward_agreement": agreement,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
