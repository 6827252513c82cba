"""The ``seal`` command, one file per command: ``fit|validate|test|predict`` (``fit.SealCLI``),
``seal export`` (``export``), ``seal report RUN_DIR`` (``report``), ``seal collect RUN_DIR OUT_DIR``
(``collect``), ``seal compare NAME=DIR ...`` (``compare``) and ``seal seeds DIR DIR ...`` (``seeds``)."""

from __future__ import annotations

import sys

from .collect import main as collect
from .compare import main as compare
from .export import export, rebuild_policy
from .export import main as export_main
from .fit import SealCLI
from .seeds import main as seeds

__all__ = ["SealCLI", "export", "main", "rebuild_policy"]


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        export_main(argv[1:])
    elif argv[:1] == ["report"]:
        from .report import main as report  # needs matplotlib, an optional dependency

        report(argv[1:])
    elif argv[:1] == ["collect"]:
        collect(argv[1:])
    elif argv[:1] == ["compare"]:
        compare(argv[1:])
    elif argv[:1] == ["seeds"]:
        seeds(argv[1:])
    else:
        SealCLI(args=args)
