"""The ``seal`` command, one file per command: ``fit|validate|test|predict`` (``fit.SealCLI``),
``seal export`` (``export``), ``seal report RUN_DIR`` (``report``), ``seal collect RUN_DIR OUT_DIR``
(``collect``) and ``seal compare NAME=DIR ...`` (``compare``)."""

from __future__ import annotations

import sys

from .collect import main as collect
from .compare import main as compare
from .export import export, rebuild_policy
from .export import main as export_main
from .fit import SealCLI

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
    else:
        SealCLI(args=args)
