"""Tasks: the one interface a new kind of context implements, and the DataModule base both tasks share.

Each task is a subpackage of the same shape: ``task.py`` (the :class:`Task`), ``sources.py``
(records from files, builtins, other packages), ``datamodule.py`` (splits for Lightning).
"""

from .base import SelfEditError, Task, grade_each
from .datamodule import ContextDataModule

__all__ = ["ContextDataModule", "SelfEditError", "Task", "grade_each"]
