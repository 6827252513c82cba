"""The ``seal`` command: ``seal fit|validate|test|predict --config configs/....yaml`` (LightningCLI),
``seal export`` (``seal_lightning.export``) and ``seal report RUN_DIR`` (``seal_lightning.report``)."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

from .callback import SelfEditCallback
from .policy import SEALPolicy


class SealCLI(LightningCLI):
    """LightningCLI with the self-edit callback always present (``--self_edit.*``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SelfEditCallback, "self_edit")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After `seal fit`, evaluate the trained policy on the test split.")

    def after_fit(self) -> None:
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
