"""The end of a validation or test stage: log the table's numbers, print it, write its files.

``results.json`` goes to the logger's version directory (``logs/version_N``); a validation inside
``seal fit`` is also kept as that round's file (``rounds.save_round``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from .conditions import Evaluator
from .results import format_matrix, format_table, metric_names, summarize, write_results
from .rounds import save_round


def report_stage(module: L.LightningModule, evaluator: Evaluator, stage: str) -> None:
    """Log, print and write the stage's table (``results.json``; a round file for validations in fit)."""
    trainer = module.trainer
    rows, retention = evaluator.finish(trainer.sanity_checking)
    stats = {f"{stage}/{k}": v for k, v in evaluator.stats.items()}  # time, memory
    module.log_dict(stats, sync_dist=True, reduce_fx="max")
    if retention is not None:
        rank_zero_info(format_matrix(retention))
    if not rows:
        return
    summary = summarize(rows, evaluator.config.reference)
    for condition, values in summary.items():
        for metric in metric_names(values):
            for key in (metric, f"{metric}_delta"):  # equal on every rank
                if key in values:
                    module.log(f"{stage}/{condition}/{key}", values[key], sync_dist=True)
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks
    if trainer.sanity_checking or not trainer.is_global_zero:
        return
    task = evaluator.rollout.task
    labels = {c: task.condition_labels.get(c, c) for c in summary}
    rank_zero_info(format_table(summary, f"{stage} (step {module.global_step})", labels))
    record = {
        "stage": stage,
        "global_step": module.global_step,
        "epoch": module.current_epoch,
        "summary": summary,
        "reference": evaluator.config.reference,
        "labels": labels,
        "per_context": rows,
    }
    write_results(Path(log_dir or trainer.default_root_dir), record, retention)
    if stage == "val" and trainer.state.fn == TrainerFn.FITTING:
        save_round(trainer.default_root_dir, module.current_epoch, record)
