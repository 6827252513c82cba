"""Self-edits per second for `seal fit` on 1 process vs N DDP processes (gloo on CPU), side by side.

    python benchmarks/ddp_scaling.py [--model smollm2-135m] [--processes 2] [--contexts 4] [--k 2]

Both runs see the same global batches (``contexts`` passages per step: one process takes them all,
N processes take ``contexts / N`` each) and the same settings: quickstart's inner loop shortened to
1 epoch and 48 sampled tokens so a pair of runs takes a few minutes. Throughput is the ledger's
self-edits over the E-step seconds the callback logs (sampling + inner loops + gathering); the
M-step and model loading are excluded. Prints ``speedup N processes: X.XX``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def fit(model: str, processes: int, contexts: int, k: int, root: Path) -> tuple[int, float, float]:
    """Run one `seal fit`; returns (self-edits, E-step seconds, wall seconds)."""
    root.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "seal_lightning",
        "fit",
        "--config",
        str(CONFIG),
        "--model.model",
        model,
        "--trainer.devices",
        str(processes),
        "--trainer.strategy",
        "ddp" if processes > 1 else "auto",
        "--trainer.default_root_dir",
        str(root),
        "--test_after_fit",
        "false",
        "--data.init_args.path",
        "builtin:squad",
        "--data.init_args.train_size",
        str(2 * contexts),
        "--data.init_args.batch_size",
        str(contexts // processes),
        "--model.inner.epochs",
        "1",
        "--model.sampling.max_new_tokens",
        "48",
        "--model.outer.k",
        str(k),
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    records = len((root / "self_edits.jsonl").read_text().splitlines())
    rows = csv.DictReader(next(root.glob("logs/version_*/metrics.csv")).open())
    estep = sum(float(r["train/estep_seconds"]) for r in rows if r["train/estep_seconds"])
    return records, estep, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--contexts", type=int, default=4, help="passages per global batch (2 batches are run)")
    parser.add_argument("--k", type=int, default=2)
    args = parser.parse_args()
    if args.contexts % args.processes:
        parser.error("--contexts must be a multiple of --processes")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.processes):
            records, estep, wall = fit(args.model, n, args.contexts, args.k, Path(tmp) / f"p{n}")
            rates[n] = records / estep
            print(
                f"{n} process(es): {records} self-edits, E-step {estep:.1f} s -> {rates[n]:.3f} self-edits/s "
                f"(whole run {wall:.1f} s)",
                flush=True,
            )
    print(f"speedup {args.processes} processes: {rates[args.processes] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
