"""The ``seal`` command: ``seal fit|validate|test|predict --config configs/....yaml`` (LightningCLI),
``seal export`` (``seal_lightning.export``) and ``seal report RUN_DIR`` (``seal_lightning.report``).

``seal fit`` also writes the rounds table (``RUN_DIR/rounds.json``, paper Table 2): round 0 is the
untrained policy's validation (``--validate_before_fit true``), round R the validation at the end of
epoch R-1 (one ReST-EM round per epoch).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .callback import SelfEditCallback
from .policy import SEALPolicy
from .results import ROUNDS_DIR, format_table, rounds


class SealCLI(LightningCLI):
    """LightningCLI with the self-edit callback always present (``--self_edit.*``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SelfEditCallback, "self_edit")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After `seal fit`, evaluate the trained policy on the test split.")
        parser.add_argument("--validate_before_fit", type=bool, default=False,
                            help="Before `seal fit`, validate the untrained policy (round 0 of the rounds table).")

    def before_fit(self) -> None:
        """Round 0: the untrained policy's validation, once: a resumed run keeps the one it has."""
        config = self.config[self.subcommand]
        evaluations = Path(self.trainer.default_root_dir) / ROUNDS_DIR
        if config.get("ckpt_path") is None:  # a fresh run: no rounds of an earlier run in this directory
            shutil.rmtree(evaluations, ignore_errors=True)
        round0 = evaluations / "val_round0.json"
        if config.get("validate_before_fit") and not round0.exists():
            self.trainer.validate(self.model, datamodule=self.datamodule)
            results = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "results.json"
            if self.trainer.is_global_zero and results.exists():
                evaluations.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(results, round0)

    def after_fit(self) -> None:
        """The validations of every round in one table (``RUN_DIR/rounds.json``), then the test table."""
        merged = rounds(self.trainer.default_root_dir)
        if merged and self.trainer.is_global_zero:
            rank_zero_info(format_table(merged["summary"], "validation by ReST-EM round"))
            Path(self.trainer.default_root_dir, "rounds.json").write_text(json.dumps(merged, indent=1))
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        from .export import main as export  # imported here: export builds on this module

        export(argv[1:])
        return
    if argv[:1] == ["report"]:
        from .report import main as report

        report(argv[1:])
        return
    SealCLI(
        SEALPolicy, L.LightningDataModule, subclass_mode_data=True, args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
