"""SEAL (Self-Adapting Language Models) on PyTorch Lightning.

The layers, each importing only those above it in this list::

    utils, lm          seeds, process gathering; models, LoRA settings and tensors, SFT batches
    generation         self-edit sampling and answers: HF generate, vLLM
    inner              the inner loop: a fresh LoRA per self-edit, trained, then asked questions
    tasks              the Task interface and its plug-ins: knowledge, arc
    rollout            sample K self-edits, score their inner updates (the E-step and evaluation share it)
    outer, evaluation  ReST-EM (callback, rewards, ledger, M-step loss); held-out conditions and tables
    distributed        FSDP2Strategy: Lightning's ModelParallelStrategy as FSDP2 data parallelism
    policy             SEALPolicy, the LightningModule
    cli                seal fit|validate|test|predict, seal export, seal report
"""

from .distributed import FSDP2Strategy
from .evaluation import EvalConfig, SelfEditWriter
from .inner import InnerConfig, InnerEngine, InnerJob, InnerResult, SequentialLoRA
from .lm import PolicyLoRA, load_model
from .outer import SelfEditCallback
from .policy import SEALPolicy
from .rollout import Rollout, SamplingConfig
from .tasks import SelfEditError, Task
from .tasks.arc import ArcDataModule, ArcTask
from .tasks.knowledge import KnowledgeDataModule, KnowledgeTask, load_passages

__all__ = [
    "ArcDataModule",
    "ArcTask",
    "EvalConfig",
    "FSDP2Strategy",
    "InnerConfig",
    "InnerEngine",
    "InnerJob",
    "InnerResult",
    "KnowledgeDataModule",
    "KnowledgeTask",
    "PolicyLoRA",
    "Rollout",
    "SamplingConfig",
    "SEALPolicy",
    "SelfEditCallback",
    "SelfEditError",
    "SelfEditWriter",
    "SequentialLoRA",
    "Task",
    "load_model",
    "load_passages",
]
