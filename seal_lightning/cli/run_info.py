"""``RUN_DIR/run.json``: every command run in a run directory, with the commit of the code that ran it."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

SOURCE = Path(__file__).resolve().parents[2]  # the checkout seal_lightning runs from, when it is one


def git_state(directory: Path = SOURCE) -> tuple[str | None, bool]:
    """The commit checked out in ``directory`` and whether tracked files differ from it; (None, False)
    when it is not the top of a git checkout or git is missing."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")  # an installed package inside some other repository is not ours
    if top is None or Path(top).resolve() != directory.resolve():
        return None, False
    commit = git("rev-parse", "HEAD")
    return commit, bool(commit and git("status", "--porcelain", "--untracked-files=no"))


def read_invocations(run: Path) -> list[dict]:
    path = run / "run.json"
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["invocations"]
    except (ValueError, KeyError, TypeError) as err:
        rank_zero_warn(f"{path}: unreadable ({err}); the run's commands are not shown")
        return []


@rank_zero_only
def record_invocation(run: str | Path, argv: list[str]) -> None:
    """Append this command (arguments, commit, time, package version) to ``run/run.json``."""
    run = Path(run)
    commit, dirty = git_state()
    try:
        package = version("seal_lightning")
    except PackageNotFoundError:
        package = "unknown"
    entry = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ["seal", *argv],
        "commit": commit,
        "dirty": dirty,
        "version": package,
    }
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "run.json.tmp"
    tmp.write_text(json.dumps({"invocations": read_invocations(run) + [entry]}, indent=1))
    os.replace(tmp, run / "run.json")  # a killed write never leaves a half-written file


class RecordInvocation(L.Callback):
    """Records the command in ``run.json`` once the stage starts (after the checkpoint callbacks have
    looked at the run directory, so a fresh run does not find it non-empty)."""

    def __init__(self, run: str | Path, argv: list[str]) -> None:
        self.run, self.argv, self.done = run, argv, False

    def _record(self, *_) -> None:
        if not self.done:
            record_invocation(self.run, self.argv)
            self.done = True

    on_fit_start = on_validation_start = on_test_start = on_predict_start = _record
