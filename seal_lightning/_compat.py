"""Module paths of the flat layout (before 0.2), kept importable for saved configs and checkpoints.

A config or checkpoint written before the move names classes such as
``seal_lightning.knowledge_data.KnowledgeDataModule`` (a ``class_path``, or a checkpoint's
``datamodule_hyper_parameters["_class_path"]``). Importing an old module path gives the module it
moved to, with a ``DeprecationWarning`` naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "arc": "tasks.arc",
    "arc_augment": "tasks.arc.augment",
    "arc_data": "tasks.arc.sources",
    "arc_edit": "tasks.arc.recipe",
    "arc_generator": "tasks.arc.generator",
    "arc_grids": "tasks.arc.grids",
    "backends": "generation",
    "batched": "inner.batched",
    "callback": "outer",
    "cpt": "evaluation.cpt",
    "data": "tasks.datamodule",
    "dist": "utils",
    "engines": "inner",
    "export": "cli.export",
    "forgetting": "evaluation.forgetting",
    "knowledge": "tasks.knowledge",
    "knowledge_data": "tasks.knowledge",
    "ledger": "outer.ledger",
    "lora_io": "lm.lora_io",
    "models": "lm.models",
    "report": "cli.report",
    "results": "evaluation.results",
    "sft": "lm.sft",
    "stacked_adamw": "inner.stacked_adamw",
    "task": "tasks.base",
    "writer": "evaluation.writer",
}
PACKAGE = __name__.rpartition(".")[0]


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``seal_lightning.<old>`` and loads it as the module it moved to."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = f"{PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module it moved to is already executed."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
