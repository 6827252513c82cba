"""Held-out evaluation: the conditions of the result table, its files, the table across rounds,
continued pretraining, forgetting, and the writer of predicted self-edits."""

from .conditions import CONDITIONS, DEFAULT_CONDITIONS, EvalConfig, Evaluator
from .results import format_matrix, format_table, summarize
from .writer import SelfEditWriter

__all__ = [
    "CONDITIONS",
    "DEFAULT_CONDITIONS",
    "EvalConfig",
    "Evaluator",
    "SelfEditWriter",
    "format_matrix",
    "format_table",
    "summarize",
]
