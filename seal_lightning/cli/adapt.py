"""``seal adapt``: a trained policy teaches a model a user's documents and saves an adapter per document.

For each document the policy writes its self-edit (as the evaluation's ``self_edit`` condition does)
and the inner LoRA is trained on it as in training; the folder layout is ``adapt.run``'s. With
questions (a data source's own, or ``--questions FILE``) each document is answered closed-book
before and after its update, and the paired table is printed. ``--merge`` also writes one model with
every update applied in order; ``--sequential`` teaches the documents as a stream and records what
each strategy forgets (``adapt.stream``). The run's settings come from ``--config`` or, when absent,
the newest ``logs/version_*/config.yaml`` beside the checkpoint (the fit's own), else the
checkpoint's hyperparameters.

    seal adapt --ckpt_path checkpoints/quickstart/last.ckpt --documents notes/ --output adapted/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..adapt import (
    STRATEGIES,
    Teacher,
    adapt,
    attach_questions,
    claim,
    forgetting_summary,
    load_documents,
    load_factors,
    run_stream,
    save_merged,
    table,
)
from ..evaluation.results import format_matrix
from ..policy import SEALPolicy
from .export import from_config, rebuild_policy
from .report_page import newest


def run_config(ckpt_path: str | None, config: str | None) -> str | None:
    """``config``, else the fit's saved config beside the checkpoint, else None (its hyperparameters)."""
    if config is not None or ckpt_path is None:
        return config
    found = newest(Path(ckpt_path).resolve().parent, "config.yaml")
    return str(found) if found else None


def untrained(config: str) -> SEALPolicy:
    """The policy ``config`` describes, before any training (its base model's own self-edits)."""
    policy = from_config(config)
    policy.configure_model()
    return policy.eval()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seal adapt", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpt_path",
        help="a policy checkpoint written by `seal fit` (last.ckpt); without it, --config's untrained policy",
    )
    p.add_argument(
        "--documents", required=True, help="JSON/JSONL of {title, text}, a folder of .txt/.md, or builtin:fictional"
    )
    p.add_argument("--output", required=True, help="the folder to write (resumed when it holds this adaptation)")
    p.add_argument("--config", help="the run's YAML; default: the fit's config.yaml beside the checkpoint")
    p.add_argument("--limit", type=int, help="the first N documents only")
    p.add_argument("--questions", help="JSON/JSONL of {document, question, answers}: asked before and after")
    p.add_argument("--merge", action="store_true", help="also write OUT/merged: every update merged in order")
    p.add_argument(
        "--sequential",
        nargs="*",
        choices=STRATEGIES,
        help=f"teach the documents as a stream and record the retention matrix; strategies: {', '.join(STRATEGIES)}"
        " (default merge)",
    )
    p.add_argument("--replay", type=int, default=2, help="earlier self-edits each `replay` update also trains on")
    p.add_argument("--group", type=int, default=8, help="documents whose inner updates train together")
    p.add_argument("--seed", type=int, default=0, help="seed of the self-edits and inner updates")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> Path:
    opts = parser().parse_args(argv)
    if opts.limit is not None and opts.limit < 1 or opts.group < 1 or opts.replay < 0:
        raise SystemExit("seal adapt: --limit and --group must be >= 1 and --replay >= 0")
    if opts.ckpt_path is None and opts.config is None:
        raise SystemExit("seal adapt: give --ckpt_path (a trained policy) or --config (its untrained start)")
    docs = load_documents(opts.documents, opts.limit)  # bad input stops here, before anything is written
    if opts.questions:
        attach_questions(docs, opts.questions)
    config = run_config(opts.ckpt_path, opts.config)
    out = Path(opts.output)
    settings = {
        "ckpt_path": opts.ckpt_path and str(Path(opts.ckpt_path).resolve()),
        "config": config and str(Path(config).resolve()),
        "documents": opts.documents,
        "document_ids": [d["id"] for d in docs],
        "questions": opts.questions,
        "seed": opts.seed,
    }
    claim(out, settings)
    policy = rebuild_policy(opts.ckpt_path, config) if opts.ckpt_path else untrained(config)
    teacher = Teacher(policy.rollout, opts.seed)
    ledger = adapt(teacher, docs, out, opts.group, progress=not opts.no_progress)
    records = [ledger[d["id"]] for d in docs]
    failed = [r["id"] for r in records if r["adapter"] is None]
    print(
        f"{len(records) - len(failed)} adapters in {out / 'adapters'}" + (f"; no update for {failed}" if failed else "")
    )
    if found := table(records):
        summary, text = found
        print(text)
        (out / "results.json").write_text(json.dumps({"summary": summary, "records": len(records)}, indent=1))
    if opts.merge:
        adapters = [load_factors(out / r["adapter"]) if r["adapter"] else None for r in records]
        print(f"merged model: {save_merged(teacher, adapters, out / 'merged')}")
    if opts.sequential is not None:
        stream(teacher, docs, ledger, out, opts.sequential or ["merge"], opts.replay)
    return out


def stream(teacher: Teacher, docs: list[dict], ledger: dict, out: Path, strategies: list[str], replay: int) -> None:
    """Run each strategy over the stream; print and write the matrices, the comparison and the plot."""
    if not all(d["questions"] for d in docs):
        raise SystemExit("seal adapt --sequential: every document needs questions (--questions FILE)")
    records = {s: run_stream(teacher, docs, ledger, out, s, replay) for s in dict.fromkeys(strategies)}
    summary = forgetting_summary(records)
    (out / "stream" / "retention.json").write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    for strategy, record in records.items():
        print(f"\n[{strategy}] " + format_matrix(record))
    print(f"\n{'strategy':<10}{'final mean':>12}{'forgetting':>12}   vs merge (paired per document)")
    for strategy, entry in summary.items():
        line = f"{strategy:<10}{entry['final_mean']:>12.3f}{entry['forgetting_mean']:>12.3f}"
        if "final_vs_merge" in entry:
            f, g = entry["final_vs_merge"], entry["forgetting_vs_merge"]
            line += f"   final {f['mean']:+.3f} ± {f['se']:.3f}, forgetting {g['mean']:+.3f} ± {g['se']:.3f}"
        print(line)
    try:
        from .report_plots import plot_retention
    except ImportError:
        print("matplotlib is not installed: no retention plot (pip install 'seal_lightning[report]')")
    else:
        print(f"retention plot: {plot_retention(records, out / 'stream')}")
