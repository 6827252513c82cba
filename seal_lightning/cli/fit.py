"""``seal fit|validate|test|predict --config configs/....yaml``: Lightning's commands through LightningCLI.

Every output of a run lives under ``trainer.default_root_dir``: unless the config says otherwise the
logger is ``CSVLogger(default_root_dir, name="logs")`` (with ``--tensorboard true`` also a
``TensorBoardLogger`` in the same ``logs/version_N``) and checkpoints (``last.ckpt`` included) are
written to ``default_root_dir``, so one override moves a whole run. Each command is recorded in
``run.json`` (``run_info``). ``seal fit`` also writes the table across ReST-EM rounds
(``seal_lightning.evaluation.rounds``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from ..evaluation import format_table, rounds
from ..evaluation.conditions import DEFAULT_SEED
from ..outer import SelfEditCallback
from ..policy import SEALPolicy
from .run_folder import refuse_or_clear
from .run_info import RecordInvocation


class SealCLI(LightningCLI):
    """LightningCLI with the self-edit callback always present (``--self_edit.*``) and every output
    under ``trainer.default_root_dir``."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.argv = list(sys.argv[1:] if args is None else args)
        super().__init__(
            SEALPolicy,
            L.LightningDataModule,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SelfEditCallback, "self_edit")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `seal fit`, evaluate the trained policy on the test split.",
        )
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=False,
            help="Before `seal fit`, validate the untrained policy (round 0 of the rounds table).",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="`seal fit` without --ckpt_path into a folder that holds a run: delete that run's ledger, "
            "round files and checkpoints first (without it, such a fit stops).",
        )
        parser.add_argument(
            "--tensorboard",
            type=bool,
            default=False,
            help="Also log to TensorBoard in the run's logs/version_N (when trainer.logger is unset).",
        )

    def _parse_ckpt_path(self) -> None:
        """With ``--config``, the model is the one the config and flags describe and a ``--ckpt_path``
        file gives its weights. Lightning would replace the model's arguments, flags included, by the
        hyperparameters saved in the file, so ``seal test --ckpt_path CKPT --model.eval.conditions
        [...]`` would silently evaluate the training run's conditions. Without ``--config``, Lightning's
        behaviour: the model is rebuilt from the file's hyperparameters."""
        if not any(a in ("-c", "--config") or a.startswith("--config=") for a in self.argv):
            super()._parse_ckpt_path()

    def _own(self, config):
        """The subcommand's part of a parsed or instantiated config (all of it with ``run=False``)."""
        return config.get(str(self.subcommand), config)

    def before_instantiate_classes(self) -> None:
        """``seed_everything`` drives every seed not set explicitly: the E-step's (``self_edit.seed``),
        the M-step's (``model.sft_seed``) and evaluation's (``model.eval.seed``), so another seed really
        samples other self-edits and trains on them in another order. A fresh ``seal fit`` into a folder
        that holds a run stops here, before anything is written (``run_folder``)."""
        config = self._own(self.config)
        seed = config.get("seed_everything")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
        if config.self_edit.seed is None:
            config.self_edit.seed = seed
        if config.model.sft_seed is None:
            config.model.sft_seed = seed
        if config.model.eval.seed is None:
            config.model.eval.seed = seed + DEFAULT_SEED
        if self.subcommand == "fit" and config.get("ckpt_path") is None:  # a fresh run: before anything is written
            root = config.trainer.get("default_root_dir") or os.getcwd()
            refuse_or_clear(root, config.self_edit.ledger, config.get("overwrite", False))

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The trainer, with the run's logger and checkpoints under ``default_root_dir`` unless set."""
        config = self._own(self.config_init)["trainer"]
        root = os.path.realpath(config.get("default_root_dir") or os.getcwd())
        if config.get("logger") in (None, True):
            csv = CSVLogger(root, name="logs")
            tensorboard = self._own(self.config).get("tensorboard")
            kwargs["logger"] = [csv, TensorBoardLogger(root, name="logs", version=csv.version)] if tensorboard else csv
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        for checkpoint in checkpoints:
            if checkpoint.dirpath is None:
                checkpoint.dirpath = root
        if not checkpoints and config.get("enable_checkpointing") is not False:
            callbacks = callbacks + [ModelCheckpoint(dirpath=root, save_last=True)]
        config["callbacks"] = callbacks + ([RecordInvocation(root, self.argv)] if self.subcommand else [])
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Round 0: the untrained policy's validation, once: a resumed run keeps the one it has."""
        config, root = self.config[self.subcommand], self.trainer.default_root_dir
        if config.get("validate_before_fit") and not rounds.has_round0(root):
            self.trainer.validate(self.model, datamodule=self.datamodule)
            results = Path(self.trainer.log_dir or root) / "results.json"
            if self.trainer.is_global_zero and results.exists():
                rounds.save_round0(root, results)

    def after_fit(self) -> None:
        """The validations of every round in one table (``RUN_DIR/rounds.json``), then the test table."""
        merged = rounds.merge(self.trainer.default_root_dir)
        if merged and self.trainer.is_global_zero:
            rank_zero_info(format_table(merged["summary"], "validation by ReST-EM round"))
            rounds.write_rounds(self.trainer.default_root_dir, merged)
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)
