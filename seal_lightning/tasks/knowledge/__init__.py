"""Knowledge incorporation (SEAL §4.2): passages -> self-edits -> closed-book QA."""

from .datamodule import KnowledgeDataModule
from .fictional import fictional_passages
from .sources import load_passages, load_synthetic
from .task import PROMPTS, KnowledgeTask, normalize, split_sentences

__all__ = [
    "PROMPTS",
    "KnowledgeDataModule",
    "KnowledgeTask",
    "fictional_passages",
    "load_passages",
    "load_synthetic",
    "normalize",
    "split_sentences",
]
