"""Peak resident memory of the shipped workloads, before and after a change, side by side in one run.

    python benchmarks/memory.py [--before c22b50a] [--only arc quickstart inner_k8] [--out results/memory.json]

Each workload runs as its own process, once from a git worktree of ``--before`` and once from this
checkout, one after the other (never two at once: the machine has 2 cores). The peak RSS is the
kernel's figure for that process (``wait4``, KiB; reported in GB = 1e9 bytes, as GNU time and
``seal collect``), so it is what the out-of-memory killer sees; a run
the kernel kills is reported as killed, with the peak it had reached. Workloads:

* ``arc``: ``seal test --config configs/arc.yaml --data.limit 2`` on SEAL's filtered ARC tasks
  (``../shared/data/arc``; without them, the config's own generated tasks);
* ``quickstart``: ``seal fit --config configs/quickstart.yaml``;
* ``inner_k8``: ``benchmarks/inner_loop.py --ks 8`` (sequential and batched at K=8; its table and
  ``speedup K=8`` line are kept, so the speed is compared too);
* ``cpt``, ``forgetting``, ``prompts``: ``seal test`` with that shipped config as it is;
* ``table2``: ``seal fit --config configs/table2.yaml --trainer.max_epochs 1`` (round 2 repeats round
  1's shapes, so one round reaches the same peak).

``--before none`` measures this checkout only (for the per-config peaks the docs state).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARC = ROOT.parent / "shared" / "data" / "arc"
SEAL = [sys.executable, "-c", "from seal_lightning.cli import main; main()"]


def workloads(out: Path) -> dict[str, list[str]]:
    arc_data = []
    if (ARC / "arc-agi_training_challenges_filtered_1B_training_set.json").is_file():
        arc_data = [
            "--data.challenges",
            str(ARC / "arc-agi_training_challenges_filtered_1B_training_set.json"),
            "--data.solutions",
            str(ARC / "arc-agi_training_solutions_filtered_1B_training_set.json"),
        ]
    return {
        "arc": [
            *SEAL,
            "test",
            "--config",
            "configs/arc.yaml",
            *arc_data,
            "--data.limit",
            "2",
            "--trainer.default_root_dir",
            str(out / "arc"),
        ],
        "quickstart": [
            *SEAL,
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--trainer.default_root_dir",
            str(out / "quickstart"),
        ],
        "inner_k8": [sys.executable, "benchmarks/inner_loop.py", "--ks", "8"],
        **{
            name: [*SEAL, "test", "--config", f"configs/{name}.yaml", "--trainer.default_root_dir", str(out / name)]
            for name in ("cpt", "forgetting", "prompts")
        },
        "table2": [
            *SEAL,
            "fit",
            "--config",
            "configs/table2.yaml",
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(out / "table2"),
        ],
    }


def measure(command: list[str], cwd: Path, log: Path) -> dict:
    """Run ``command`` in ``cwd`` importing seal_lightning from there; its peak RSS, time and exit."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2),
        "seconds": round(time.perf_counter() - start),
        "exit": process.returncode,
        "killed": process.returncode == -9,
        "tail": log.read_text().strip().splitlines()[-4:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="c22b50a", help="git revision to compare with ('none': this checkout only)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["arc", "quickstart", "inner_k8"],
        choices=["arc", "quickstart", "inner_k8", "cpt", "forgetting", "prompts", "table2"],
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the runs' output directories here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="seal-memory-"))
    before = Path(tempfile.mkdtemp(prefix="seal-before-")) / "tree"
    trees = [("after", ROOT)]
    if args.before != "none":
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True, capture_output=True
        )
        trees.insert(0, ("before", before))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rows = {}
    try:
        for name in args.only:
            rows[name] = {}
            for which, tree in trees:
                out = work / which
                out.mkdir(parents=True, exist_ok=True)
                rows[name][which] = measure(workloads(out)[name], tree, out / f"{name}.log")
                print(name, which, rows[name][which], flush=True)
    finally:
        if args.before != "none":
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
        shutil.rmtree(before.parent, ignore_errors=True)
    print(f"\n{'workload':<12}{'before GB':>11}{'after GB':>10}{'before s':>10}{'after s':>9}")

    def mark(r: dict | None, key: str) -> str:
        if r is None:
            return "-"
        return f"{r[key]:.2f}{'k' if r['killed'] else ''}" if key == "peak_rss_gb" else str(r[key])

    for name, runs in rows.items():
        b, a = runs.get("before"), runs["after"]
        print(
            f"{name:<12}{mark(b, 'peak_rss_gb'):>11}{mark(a, 'peak_rss_gb'):>10}"
            f"{mark(b, 'seconds'):>10}{mark(a, 'seconds'):>9}"
        )
    print("k: killed by the kernel (out of memory) at that peak")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]),
                    "commit": commit,
                    "before": args.before,
                    "threads": 2,
                    "workloads": rows,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
