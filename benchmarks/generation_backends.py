"""Self-edit sampling and answering throughput, transformers (``hf``) against vLLM, side by side in one run.

    bash scripts/vllm_cpu_env.sh && .venv-vllm/bin/python benchmarks/generation_backends.py \
        [--passages 8] [--k 4] [--dtype float32] [--out results/generation_backends.json]

Both backends run the quickstart's settings in this process, one after the other (SmolLM2-135M, policy
LoRA r=16, inner LoRA r=32 for 4 epochs at batch 4, 128-token self-edits at T=0.7, 24-token greedy
answers), on N training passages of the shipped SQuAD subset:

* ``sample``: K self-edits per passage from the policy (generated tokens per second);
* ``answer``: the E-step's scoring of the **same** self-edits (hf's): pre-update answers of every
  question, one inner update per self-edit (trained in torch either way), and every question answered
  again by each updated model — through the backend: hf routes each row to its adapter in the batched
  engine, vLLM serves the policy's adapter composed with each inner adapter. ``answer`` seconds are
  the scoring's wall time less its inner training; questions answered per second follow.
* ``reward agreement``: the F1- and contains-gain rewards of the two backends (Pearson correlation,
  mean absolute difference): same self-edits, same inner updates, only the answering differs.

vLLM's engine start is timed apart (``startup``). ``--dtype`` sets both the policy and the inner
loop's frozen copy, so the two backends answer from the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reward_reliability import pearson  # noqa: E402


def run(backend: str, args: argparse.Namespace, edits: list[list[str]] | None) -> dict:
    from seal_lightning import InnerConfig, KnowledgeDataModule, PolicyLoRA, SamplingConfig, SEALPolicy
    from seal_lightning.generation import VLLMConfig

    inner = InnerConfig(
        r=32, alpha=64, lr=3e-3, epochs=4, batch_size=4, answer_tokens=24, memory_budget=4.0, dtype=args.dtype
    )
    policy = SEALPolicy(
        model=args.model,
        dtype=args.dtype,
        lora=PolicyLoRA(r=16, alpha=32),
        inner=inner,
        sampling=SamplingConfig(max_new_tokens=128, temperature=0.7, top_p=0.9),
        generation=backend,
        vllm=VLLMConfig(max_model_len=2048),
    )
    policy.configure_model()
    rollout, tokenizer = policy.rollout, policy.tokenizer
    data = KnowledgeDataModule(path="builtin:squad", train_size=args.passages, val_size=0, test_size=4)
    data.setup("fit")
    contexts = [dict(c) for c in data.train_set]
    start = time.perf_counter()
    rollout.sample(contexts[:1], 1, seed=99)  # vLLM: starts the engine; hf: pages the weights in
    startup = time.perf_counter() - start

    start = time.perf_counter()
    _, sampled = rollout.sample(contexts, args.k, seed=0)
    sample_seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for row in sampled for t in row)
    edits = edits or sampled
    start = time.perf_counter()
    baseline, outcomes = rollout.score_updates(contexts, edits, seed=0)
    score_seconds = time.perf_counter() - start
    train = sum(o.result.extra["train_seconds"] for row in outcomes for o in row if o.result is not None)
    questions = sum(len(rollout.question_prompts(c)) for c in contexts)
    answered = questions * (1 + sum(o.error is None for row in outcomes for o in row) / len(contexts))
    return {
        "startup_seconds": round(startup, 1),
        "sample_seconds": round(sample_seconds, 1),
        "sample_tok_s": round(tokens / sample_seconds, 1),
        "answer_seconds": round(score_seconds - train, 1),
        "answers_per_second": round(answered / (score_seconds - train), 2),
        "train_seconds": round(train, 1),
        "edits": edits,
        "rewards": {
            m: [0.0 if o.error else o.scores[m] - b.scores[m] for b, row in zip(baseline, outcomes) for o in row]
            for m in ("f1", "contains")
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    import vllm

    from seal_lightning.cli.run_info import git_state

    torch.set_num_threads(args.threads)
    commit, dirty = git_state()
    hf = run("hf", args, None)
    fast = run("vllm", args, hf["edits"])
    print(
        f"SmolLM2-135M, {args.passages} passages x K={args.k}, {args.dtype}, {args.threads} threads, "
        f"vllm {vllm.__version__}"
    )
    print(
        f"{'backend':8} {'startup s':>9} {'sample s':>9} {'sample tok/s':>12} "
        f"{'answer s':>9} {'answers/s':>9} {'train s':>8}"
    )
    for name, r in (("hf", hf), ("vllm", fast)):
        print(
            f"{name:8} {r['startup_seconds']:9.1f} {r['sample_seconds']:9.1f} {r['sample_tok_s']:12.1f} "
            f"{r['answer_seconds']:9.1f} {r['answers_per_second']:9.2f} {r['train_seconds']:8.1f}"
        )
    agreement = {}
    for metric in ("f1", "contains"):
        a, b = hf["rewards"][metric], fast["rewards"][metric]
        agreement[metric] = {
            "correlation": pearson(a, b),
            "mean_abs_difference": sum(abs(x - y) for x, y in zip(a, b)) / len(a),
        }
        print(
            f"{metric} gain reward agreement: correlation {agreement[metric]['correlation']:.3f}, "
            f"mean |difference| {agreement[metric]['mean_abs_difference']:.4f}"
        )
    speedups = {
        "sampling": fast["sample_tok_s"] / hf["sample_tok_s"],
        "answering": fast["answers_per_second"] / hf["answers_per_second"],
    }
    print(f"sampling speedup vllm/hf: {speedups['sampling']:.2f}")
    print(f"answering speedup vllm/hf: {speedups['answering']:.2f}")
    if args.out:
        record = {
            "command": "python " + " ".join(["benchmarks/generation_backends.py", *(argv or sys.argv[1:])]),
            "commit": commit,
            "dirty": dirty,
            "vllm": vllm.__version__,
            "threads": args.threads,
            "passages": args.passages,
            "k": args.k,
            "dtype": args.dtype,
            "hf": {k: v for k, v in hf.items() if k != "edits"},
            "vllm_backend": {k: v for k, v in fast.items() if k != "edits"},
            "reward_agreement": agreement,
            "speedup": speedups,
        }
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
