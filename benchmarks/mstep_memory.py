"""Peak resident memory of one M-step optimiser step, by algorithm and ``outer.sft_micro_batch_size``.

    python benchmarks/mstep_memory.py [--algorithms rest_em dpo] [--micro 0 4 2] [--out results/mstep_memory.json]

``configs/effect.yaml``'s policy (SmolLM2-135M, LoRA r=16 on every linear layer, fp32) takes one
optimiser step of ``sft_batch_size`` 4 examples on SQuAD passages: each example's prompt is the
chat-formatted ``implications`` self-edit prompt of a passage, its self-edit 128 tokens of that
passage (DPO: a pair of two such texts, chosen and rejected, so twice the rows). Each setting runs
in its own process, one after another; the peak is the kernel's figure for that process (``wait4``),
minus nothing: it includes loading the model (``load`` row: the same process stopped before the step).
``--micro N``: ``sft_micro_batch_size`` N sequences (a DPO pair is two); 0: null, the whole step at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory  # noqa: E402


def child(algorithm: str, micro: int, step: bool) -> None:
    import torch

    from seal_lightning import PolicyLoRA, SEALPolicy
    from seal_lightning.outer import OuterConfig
    from seal_lightning.outer.mstep import micro_batches, step_loss
    from seal_lightning.outer.objective import PreferenceExample, SFTExample
    from seal_lightning.tasks.knowledge import KnowledgeTask
    from seal_lightning.tasks.knowledge.sources import load_passages

    torch.set_num_threads(2)
    outer = OuterConfig(algorithm=algorithm, k=4, sft_batch_size=4, sft_micro_batch_size=micro or None)
    policy = SEALPolicy(lora=PolicyLoRA(r=16, alpha=32), outer=outer)
    policy.configure_model()
    if not step:
        return
    tok, task = policy.tokenizer, KnowledgeTask()
    passages = load_passages("builtin:squad")[:4]
    prompts = [policy.rollout.format_prompt(task.self_edit_prompt(p)) for p in passages]
    texts = [tok.decode(tok(p["context"])["input_ids"][:128]) for p in passages]
    others = [tok.decode(tok(p["context"])["input_ids"][-128:]) for p in passages]
    if algorithm == "dpo":
        examples = [PreferenceExample(p, a, b) for p, a, b in zip(prompts, texts, others)]
    else:
        examples = [SFTExample(p, t) for p, t in zip(prompts, texts)]
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    for mine in micro_batches(len(examples), 1, 0, outer.micro_examples):
        step_loss(policy.model, tok, outer, examples, outer.sft_max_length, 1, mine, policy.reference).backward()
    optimizer.step()


def child_run(args: list[str], logs: Path) -> dict:
    """One child process's peak RSS, seconds and exit (``memory.measure``; its output in ``logs``)."""
    return memory.measure([sys.executable, __file__, "--child", *args], ROOT, logs / f"{'-'.join(args)}.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=["rest_em", "dpo"])
    parser.add_argument("--micro", nargs="+", type=int, default=[0, 4, 2])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        algorithm, micro, step = args.child
        child(algorithm, int(micro), step == "step")
        return
    logs = Path(tempfile.mkdtemp(prefix="mstep-memory-"))
    rows = [{"setting": "load", **child_run(["rest_em", "0", "load"], logs)}]
    for algorithm in args.algorithms:
        for micro in args.micro:
            setting = f"{algorithm} micro={micro or 'null'}"
            rows.append({"setting": setting, **child_run([algorithm, str(micro), "step"], logs)})
    print(f"{'setting':<22} {'peak GB':>8} {'seconds':>8}")
    for row in rows:
        print(
            f"{row['setting']:<22} {row['peak_rss_gb']:>8.2f} {row['seconds']:>8}"
            + ("" if row["exit"] == 0 else " failed")
        )
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        command = "python benchmarks/mstep_memory.py " + " ".join(sys.argv[1:])
        args.out.write_text(
            json.dumps({"command": command, "commit": commit, "threads": 2, "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
