"""``seal collect RUN_DIR OUT_DIR``: a finished run's small outputs, ready to commit under ``results/``.

Copies ``rounds.json`` (a run stopped before its end: merged from the rounds it validated, marked
``"stopped_early": true``), ``run.json`` (every command and the commit that ran it), the per-round
validation files and the newest test ``results.json``; writes ``ledger_summary.json`` (per ReST-EM
round: self-edits, reward mean/se, the per-context best reward, kept, failed, inner loss, words)
and, from the GNU ``time -v`` logs of the run, ``run_stats.json`` (wall clock, peak RSS, exit status;
a resumed run gives one log per invocation: wall clocks summed, the largest peak, each in ``parts``);
``phases.json``: per phase (sampling, scoring, M-step, validation, test) its logged wall seconds and
peak resident memory, which tell where a run's time and peak went. Prints the rounds as a markdown
table with paired differences, for the README.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

from ..evaluation import rounds
from ..outer.ledger import read_ledger
from .report_page import newest

TIME_FIELDS = {
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall_clock",
    "Maximum resident set size (kbytes)": "peak_rss_kb",
    "Exit status": "exit_status",
    "Percent of CPU this job got": "cpu_percent",
}


def ledger_summary(records: list[dict]) -> dict[str, dict]:
    """Per round (ledger epoch): counts and reward statistics of its self-edits."""
    out = {}
    for epoch in sorted({r["epoch"] for r in records}):
        rows = [r for r in records if r["epoch"] == epoch]
        rewards = [r["reward"] for r in rows]
        mean = sum(rewards) / len(rewards)
        var = sum((x - mean) ** 2 for x in rewards) / max(1, len(rewards) - 1)
        best = [
            max(r["reward"] for r in rows if r["context_id"] == c) for c in dict.fromkeys(r["context_id"] for r in rows)
        ]
        losses = [r["inner_loss"] for r in rows if r.get("inner_loss") is not None]
        out[str(epoch + 1)] = {
            "self_edits": len(rows),
            "contexts": len(best),
            "reward_mean": mean,
            "reward_se": math.sqrt(var / len(rewards)),
            "best_of_k_reward_mean": sum(best) / len(best),
            "positive_fraction": sum(x > 0 for x in rewards) / len(rewards),
            "kept": sum(bool(r["kept"]) for r in rows),
            "failed": sum("error" in r for r in rows),
            "inner_loss_mean": sum(losses) / len(losses) if losses else None,
            "words_mean": sum(len(r["text"].split()) for r in rows) / len(rows),
        }
    return out


PHASES = {
    "sample": "train/sample_",
    "score": "train/score_",
    "mstep": "train/mstep_",
    "validation": "val/",
    "test": "test/",
}


def phase_stats(run: Path) -> dict[str, dict]:
    """Per phase, from every ``logs/version_*/metrics.csv`` of the run (``utils.Span``'s figures): how
    many times it was logged, its total and mean wall seconds and its largest peak resident memory."""
    values = defaultdict(list)
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value and key.endswith(("seconds", "peak_rss_gb")):
                        values[key].append(float(value))
    out = {}
    for phase, prefix in PHASES.items():
        if seconds := values.get(f"{prefix}seconds"):
            peaks = values.get(f"{prefix}peak_rss_gb")
            out[phase] = {
                "logged": len(seconds),
                "seconds_total": round(sum(seconds), 1),
                "seconds_mean": round(sum(seconds) / len(seconds), 1),
                "peak_rss_gb": round(max(peaks), 2) if peaks else None,
            }
    return out


def time_stats(log: Path) -> dict:
    """The GNU ``time -v`` figures at the end of ``log``; peak RSS in GB."""
    stats = {}
    for line in log.read_text(errors="replace").splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in TIME_FIELDS:
            stats[TIME_FIELDS[key]] = value
        elif match := re.fullmatch(r"Command terminated by signal (\d+)", line.strip()):
            stats["terminated_by_signal"] = int(match[1])  # killed: time still reports exit status 0
    if "peak_rss_kb" not in stats:
        raise ValueError(f"{log}: no 'Maximum resident set size' line; was the run started under /usr/bin/time -v?")
    stats["peak_rss_gb"] = round(
        int(stats.pop("peak_rss_kb")) * 1024 / 1e9, 2
    )  # time's kbytes are KiB; GB as Span logs
    stats["exit_status"] = int(stats.get("exit_status", -1))
    return stats


def resumed_stats(logs: list[Path]) -> dict:
    """:func:`time_stats` of one run's invocations (a run resumed after a stop): the wall clocks summed,
    the largest peak, the last exit status, and each invocation's own figures under ``parts``."""
    parts = [time_stats(log) for log in logs]
    if len(parts) == 1:
        return parts[0]
    seconds = sum(_seconds(p["wall_clock"]) for p in parts)
    return {
        "wall_clock": f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{seconds % 60:05.2f}",
        "peak_rss_gb": max(p["peak_rss_gb"] for p in parts),
        "exit_status": parts[-1]["exit_status"],
        "parts": parts,
    }


def _seconds(clock: str) -> float:
    """GNU time's ``h:mm:ss`` or ``m:ss.ss`` in seconds."""
    seconds = 0.0
    for field in clock.split(":"):
        seconds = seconds * 60 + float(field)
    return seconds


def format_paired(diff: dict) -> str:
    """A :func:`~..evaluation.results.paired` result as ``mean ± s.e. [low, high]``."""
    low, high = diff["ci95"]
    return f"{diff['mean']:+.3f} ± {diff['se']:.3f} [{low:+.3f}, {high:+.3f}]"


def format_delta(entry: dict, key: str) -> str:
    if key not in entry:
        return ""
    return format_paired({"mean": entry[key], "se": entry[f"{key}_se"], "ci95": entry[f"{key}_ci95"]})


def summary_markdown(
    summary: dict, reference: str, metrics: tuple[str, ...], extra: dict[str, str] | None = None
) -> str:
    """One row per condition: each metric and its paired Δ to ``reference`` and to passage (mean ± s.e.
    [bootstrap 95% interval]); ``extra``: one more column, by condition."""
    against = reference or "(none: no round 0)"
    head = ["condition"] + [h for m in metrics for h in (m, f"Δ{m} vs {against}", f"Δ{m} vs passage")]
    head += ["training reward"] if extra is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for condition, entry in summary.items():
        cells = [condition] + [
            c
            for m in metrics
            for c in (f"{entry[m]:.3f}", format_delta(entry, f"{m}_delta"), format_delta(entry, f"{m}_vs_passage"))
        ]
        cells += [extra.get(condition, "")] if extra is not None else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rounds_markdown(rounds: dict, ledger: dict[str, dict], metrics: tuple[str, ...] = ("f1", "contains")) -> str:
    """The merged rounds' table (``summary_markdown``) with the mean training reward of the round
    that made each row."""
    extra = {}
    for condition in rounds["summary"]:
        match = re.search(r"\(round (\d+)\)$", condition)
        train = ledger.get(match[1]) if match else None
        extra[condition] = f"{train['reward_mean']:+.4f} ± {train['reward_se']:.4f}" if train else ""
    return summary_markdown(rounds["summary"], rounds["reference"], metrics, extra)


def collect(run: Path, out: Path, time_logs: list[Path] | None = None) -> str:
    """Copy and summarise ``run`` into ``out``; returns the markdown table of its rounds."""
    if (run / "rounds.json").is_file():
        merged = json.loads((run / "rounds.json").read_text())
    elif (merged := rounds.merge(run)) is not None:  # stopped before its end: the rounds it validated
        merged["stopped_early"] = True
    else:
        raise FileNotFoundError(
            f"{run}: no rounds.json nor evaluations/val_round*.json; is it the "
            "trainer.default_root_dir of a `seal fit`?"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.json").write_text(json.dumps(merged, indent=1))
    if (run / "run.json").is_file():
        shutil.copyfile(run / "run.json", out / "run.json")
    (out / "evaluations").mkdir(exist_ok=True)
    for path in sorted((run / "evaluations").glob("val_round*.json")):
        shutil.copyfile(path, out / "evaluations" / path.name)
    results = newest(run, "results.json")
    if results and json.loads(results.read_text()).get("stage") == "test":
        shutil.copyfile(results, out / "test_results.json")
    ledger = ledger_summary(read_ledger(run / "self_edits.jsonl")) if (run / "self_edits.jsonl").is_file() else {}
    (out / "ledger_summary.json").write_text(json.dumps(ledger, indent=1))
    if time_logs:
        (out / "run_stats.json").write_text(json.dumps(resumed_stats(time_logs), indent=1))
    if phases := phase_stats(run):
        (out / "phases.json").write_text(json.dumps(phases, indent=1))
    return rounds_markdown(merged, ledger)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="seal collect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="the run's trainer.default_root_dir")
    parser.add_argument("out_dir", type=Path, help="where the small files go, e.g. results/effect_squad_seed0")
    parser.add_argument(
        "--time-log",
        type=Path,
        nargs="+",
        help="the run's log when it ran under /usr/bin/time -v (a resumed run: one per invocation, in order)",
    )
    args = parser.parse_args(argv)
    print(collect(args.run_dir, args.out_dir, args.time_log))
