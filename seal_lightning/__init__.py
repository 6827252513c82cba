"""SEAL (Self-Adapting Language Models) on PyTorch Lightning."""

from .callback import SelfEditCallback
from .inner import InnerConfig, InnerEngine, InnerJob, InnerResult, SequentialLoRA
from .knowledge import KnowledgeTask
from .knowledge_data import KnowledgeDataModule, load_passages
from .models import load_model
from .policy import EvalConfig, PolicyLoRA, SamplingConfig, SEALPolicy
from .task import SelfEditError, Task
from .writer import SelfEditWriter

__all__ = [
    "EvalConfig", "InnerConfig", "InnerEngine", "InnerJob", "InnerResult", "KnowledgeDataModule", "KnowledgeTask",
    "PolicyLoRA", "SamplingConfig", "SEALPolicy", "SelfEditCallback", "SelfEditError", "SelfEditWriter", "SequentialLoRA", "Task",
    "load_model", "load_passages",
]
