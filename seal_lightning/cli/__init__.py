"""The ``seal`` command, one file per command: ``fit|validate|test|predict`` (``fit.SealCLI``),
``seal export`` (``export``), ``seal adapt`` (``adapt``), ``seal report RUN_DIR`` (``report``),
``seal collect RUN_DIR OUT_DIR`` (``collect``), ``seal compare NAME=DIR ...`` (``compare``),
``seal seeds DIR DIR ...`` (``seeds``) and ``seal plan --config ...`` (``plan``).
``seal --help`` lists them all; ``seal COMMAND --help`` gives one's options."""

from __future__ import annotations

import sys

from .adapt import main as adapt
from .collect import main as collect
from .compare import main as compare
from .export import export, rebuild_policy
from .export import main as export_main
from .fit import SealCLI
from .plan import main as plan
from .seeds import main as seeds

__all__ = ["COMMANDS", "SealCLI", "export", "main", "rebuild_policy"]

COMMANDS = {
    "fit": "train the policy: ReST-EM rounds of E-steps (self-edits, inner updates, rewards) and M-steps",
    "validate": "score the validation split under the evaluation conditions (model.eval.conditions)",
    "test": "score the test split under the evaluation conditions",
    "predict": "write one self-edit per context from the policy",
    "export": "a trained policy as a plain Hugging Face model directory (LoRA merged)",
    "adapt": "teach a model your documents with a trained policy: a self-edit and a LoRA adapter per document",
    "report": "plots, report.md and a browsable page of a run's self-edits (needs matplotlib)",
    "collect": "a finished run's small outputs (rounds, commands, ledger summary) ready to commit under results/",
    "compare": "runs that differ in one setting, side by side, paired over the same validation contexts",
    "seeds": "one setting trained under several seeds: its effect, each run paired with its own round 0",
    "plan": "a config's memory per device (policy, inner loop, vLLM, KV cache) and time per round, before it runs",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(
        [
            "usage: seal COMMAND [options]   (seal COMMAND --help for a command's options)",
            "",
            "commands:",
            *lines,
            "",
            "fit, validate, test, predict and plan take --config FILE.yaml "
            "(LightningCLI; --print_config shows it whole).",
        ]
    )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        print(usage())
        if command is None:
            raise SystemExit(2)
    elif command == "export":
        export_main(argv[1:])
    elif command == "adapt":
        adapt(argv[1:])
    elif command == "report":
        from .report import main as report  # needs matplotlib, an optional dependency

        report(argv[1:])
    elif command == "collect":
        collect(argv[1:])
    elif command == "compare":
        compare(argv[1:])
    elif command == "seeds":
        seeds(argv[1:])
    elif command == "plan":
        plan(argv[1:])
    else:
        SealCLI(args=args)
