"""``seal adapt``: a trained policy teaches a model a user's documents, one LoRA update per document."""

from .documents import attach_questions, load_documents, passages
from .run import adapt, claim, read_ledger, save_merged, table
from .stream import STRATEGIES, forgetting_summary, load_factors, run_stream
from .teach import Teacher, Update

__all__ = [
    "STRATEGIES",
    "Teacher",
    "Update",
    "adapt",
    "attach_questions",
    "claim",
    "forgetting_summary",
    "load_documents",
    "load_factors",
    "passages",
    "read_ledger",
    "run_stream",
    "save_merged",
    "table",
]
