"""Inner-loop throughput: sequential peft vs the batched multi-LoRA engine, side by side in one run.

    pip install -e ".[bench]"
    python benchmarks/inner_loop.py [--model smollm2-135m] [--epochs 2] [--ks 1 4 8 16]
    python benchmarks/inner_loop.py --device cuda --dtype bfloat16 [--random-weights] [--out FILE.json]

Self-edits are realistic SQuAD ones (10 lines of a shipped passage, 20-60 tokens each) with 8
closed-book questions; reference hyperparameters (LoRA r=32, alpha=64, all linear layers,
lr 1e-3, batch 1 per adapter). Prints self-edits/s (training + answers), training tokens/s,
model FLOPs utilisation against a matmul peak measured in the same run (same device and dtype),
peak memory (RSS on CPU, allocated GPU memory on CUDA), and last ``speedup K=8: X.XX``; ``--out``
also writes every row to a JSON file (``seal plan --plan.benchmark FILE`` times a round from it).
``--random-weights`` times the architecture without its weights (same FLOPs; answers then run
to ``answer_tokens`` instead of stopping at a newline), for machines the weights cannot reach.
"""

from __future__ import annotations

import argparse
import copy
import json
import threading
import time

import psutil
import torch

from seal_lightning.inner import InnerConfig, InnerJob, make_engine
from seal_lightning.lm.models import load_model
from seal_lightning.tasks.knowledge import load_passages, split_sentences


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    if device.type == "cuda":
        n, repeats = 8192, 20
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class PeakMemory:
    """Peak allocated GPU memory on CUDA; else the process RSS, sampled every 20 ms."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.peak, self._stop = psutil.Process().memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        proc = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()


def make_jobs(tokenizer, n: int, chat) -> list[InnerJob]:
    jobs = []
    for i, passage in enumerate(p for p in load_passages("builtin:squad") if len(p["questions"]) >= 4):
        if len(jobs) == n:
            break
        lines = [s for s in split_sentences(passage["context"]) if 20 <= len(tokenizer(s)["input_ids"]) <= 60]
        if len(lines) < 3:
            continue
        lines = (lines * 10)[:10]
        questions = [chat(q["question"]) for q in passage["questions"]]
        jobs.append(InnerJob([("", f"{passage['title']}\n{line}") for line in lines], (questions * 8)[:8], seed=i))
    return jobs


def measure(engine_name: str, base, tok, jobs, config: InnerConfig) -> dict:
    engine = make_engine(InnerConfig(**{**config.__dict__, "engine": engine_name}))
    model = copy.deepcopy(base).requires_grad_(False)
    device = next(model.parameters()).device
    with PeakMemory(device) as memory:
        sync(device)
        start = time.perf_counter()
        results = engine.run(model, tok, jobs)
        sync(device)
        seconds = time.perf_counter() - start
    assert all(r.error is None for r in results), [r.error for r in results]
    tokens = sum(len(tok(c)["input_ids"]) for job in jobs for _, c in job.sequences) * config.epochs
    train_seconds = sum(r.extra["train_seconds"] for r in results)
    return {"seconds": seconds, "tokens": tokens, "memory": memory.peak, "train_seconds": train_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--sequential", type=int, default=8, help="self-edits timed on the sequential path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--random-weights", action="store_true", help="config and tokenizer only (timing)")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    base, tok = load_model(args.model, args.dtype, random_weights=args.random_weights)
    base.to(device)
    chat = lambda q: tok.apply_chat_template(  # noqa: E731
        [{"role": "user", "content": f"Let's answer a question directly and concisely.\nQuestion: {q}\nAnswer:\n"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    config = InnerConfig(
        r=32, alpha=64, lr=1e-3, epochs=args.epochs, batch_size=1, answer_tokens=16, max_adapters=max(args.ks)
    )
    jobs = make_jobs(tok, max(args.ks + [args.sequential]), chat)
    n_base = sum(p.numel() for p in base.parameters())
    n_lora = sum(
        32 * (m.in_features + m.out_features)
        for n, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not base.get_output_embeddings()
    )
    flops_per_token = 4 * n_base + 6 * n_lora
    peak = matmul_peak(device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.model}{' (random weights)' * args.random_weights}: {n_base / 1e6:.1f}M params, "
        f"LoRA {n_lora / 1e6:.2f}M; "
        f"{where}; {args.dtype} matmul peak {peak / 1e9:.0f} GFLOP/s; {args.epochs} epochs, "
        f"10 lines + 8 questions per self-edit\n"
    )
    memory = "peak GPU" if device.type == "cuda" else "peak RSS"
    print(
        f"{'engine':<11}{'K':>4}{'seconds':>9}{'edits/s':>9}{'speedup':>9}{'train tok/s':>12}{'MFU':>6}{memory:>10}",
        flush=True,
    )
    rows, seq_rate = [], None
    for name, k in [("sequential", args.sequential)] + [("batched", k) for k in args.ks]:
        m = measure(name, base, tok, jobs[:k], config)
        rows.append((name, k, m))
        rate = k / m["seconds"]
        seq_rate = seq_rate or rate
        tok_s = m["tokens"] / m["train_seconds"]
        print(
            f"{name:<11}{k:>4}{m['seconds']:>9.1f}{rate:>9.3f}{rate / seq_rate:>9.2f}{tok_s:>12.0f}"
            f"{tok_s * flops_per_token / peak:>6.0%}{m['memory'] / 2**30:>8.2f}GB",
            flush=True,
        )
    print(
        "edits/s and speedup: training + answering; train tok/s and MFU: training alone "
        "(FLOPs/token = 4 N_base + 6 N_lora)"
    )
    if args.out:
        summary = {"model": args.model, "random_weights": args.random_weights, "device": where, "dtype": args.dtype}
        summary |= {"epochs": args.epochs, "params": n_base, "lora_params": n_lora, "matmul_peak_flops": peak}
        summary["rows"] = [{"engine": name, "k": k, **m} for name, k, m in rows]
        with open(args.out, "w") as out:
            json.dump(summary, out, indent=1)
    by_k = {k: m for name, k, m in rows if name == "batched"}
    if 8 in by_k:
        print(f"speedup K=8: {(8 / by_k[8]['seconds']) / seq_rate:.2f}")


if __name__ == "__main__":
    main()
