"""Per-rank memory of the policy under FSDP2: 1 process against N sharded ones, side by side.

    python benchmarks/fsdp_memory.py [--model smollm2-135m] [--ranks 2] [--full] [--out results/fsdp_memory.json]

Each configuration builds the policy as ``seal fit`` does (``--full``: every weight trained; else
the default policy LoRA r=16), shards it with ``lm.fsdp.shard`` over N gloo processes on this CPU
(N = 1: not sharded), takes one AdamW step of the M-step's loss on 4 (prompt, self-edit) pairs and
reports, per rank, the bytes of its parameters (local shards), gradients and optimiser state; and
the whole-weight copy each rank gathers for the E-step (``lm.fsdp.gather``), which sharding does not
shrink. The last line is the ratio the FSDP issue asks for: ``per-rank parameter memory N ranks / 1``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seal_lightning.lm import PolicyLoRA, load_model  # noqa: E402
from seal_lightning.lm.fsdp import gather, shard  # noqa: E402
from seal_lightning.outer.mstep import micro_batches, step_loss  # noqa: E402
from seal_lightning.outer.objective import OuterConfig  # noqa: E402

PAIRS = [("Write facts about the passage.", f"Fact {i}: the river is {i * 100} kilometres long.") for i in range(4)]


def local_bytes(tensors) -> int:
    """Bytes held by this rank: a DTensor's local shard, or the tensor."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def measure(rank: int, world: int, args: argparse.Namespace, init: str, out: str) -> None:
    torch.set_num_threads(max(1, args.threads // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from peft import get_peft_model
    from torch.distributed.device_mesh import init_device_mesh

    model, tokenizer = load_model(args.model)
    if not args.full:
        model = get_peft_model(model, PolicyLoRA(r=16, alpha=32).peft_config())
    template = None
    if world > 1:
        template = shard(model, init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    step_loss(
        model, tokenizer, OuterConfig(), PAIRS, 256, world, micro_batches(len(PAIRS), world, rank, None)[0]
    ).backward()
    optimizer.step()
    whole = gather(model, template) if template is not None else model
    row = {
        "ranks": world,
        "rank": rank,
        "parameters_mb": local_bytes(model.parameters()) / 2**20,
        "gradients_mb": local_bytes(p.grad for p in params if p.grad is not None) / 2**20,
        "optimizer_mb": local_bytes(
            t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0
        )
        / 2**20,
        "gathered_copy_mb": local_bytes(whole.parameters()) / 2**20,
    }
    rows = [None] * world
    if world > 1:
        dist.all_gather_object(rows, row)
        dist.destroy_process_group()
    else:
        rows = [row]
    if rank == 0:
        Path(out).write_text(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="train every weight instead of the policy LoRA")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, args.ranks):
            out = f"{tmp}/rows{world}.json"
            mp.spawn(measure, args=(world, args, f"{tmp}/init{world}", out), nprocs=world)
            results[world] = json.loads(Path(out).read_text())
    print(f"{args.model}, {'full finetune' if args.full else 'policy LoRA r=16'}, gloo on CPU")
    print(f"{'ranks':>5} {'rank':>4} {'params MB':>10} {'grads MB':>9} {'optim MB':>9} {'E-step copy MB':>15}")
    for rows in results.values():
        for r in rows:
            print(
                f"{r['ranks']:>5} {r['rank']:>4} {r['parameters_mb']:>10.1f} {r['gradients_mb']:>9.1f} "
                f"{r['optimizer_mb']:>9.1f} {r['gathered_copy_mb']:>15.1f}"
            )
    one, many = results[1][0], max(results[args.ranks], key=lambda r: r["parameters_mb"])
    ratio = many["parameters_mb"] / one["parameters_mb"]
    state = (many["gradients_mb"] + many["optimizer_mb"]) / max(one["gradients_mb"] + one["optimizer_mb"], 1e-9)
    print(f"per-rank gradient + optimiser memory {args.ranks} ranks / 1: {state:.2f}")
    print(f"per-rank parameter memory {args.ranks} ranks / 1: {ratio:.2f}")
    if args.out:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
        record = {
            "command": " ".join(["python", "benchmarks/fsdp_memory.py", *sys.argv[1:]]),
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "seal_lightning")),
            "model": args.model,
            "full": args.full,
            "ranks": results,
            "parameter_ratio": ratio,
            "state_ratio": state,
        }
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
