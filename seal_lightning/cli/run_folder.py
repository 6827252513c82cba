"""A run folder is never wiped by accident: a fresh ``seal fit`` into a folder that holds a run stops.

A run's own files are its ledger of self-edits, its round files (``evaluations/``, ``rounds.json``)
and its checkpoints (``*.ckpt``, files or FSDP's sharded folders). ``run.json`` and ``logs/`` are
appended to, never replaced, so they do not count.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..evaluation.rounds import ROUNDS_DIR


def run_files(root: str | Path, ledger: str) -> list[Path]:
    """The files of an earlier run in ``root``, sorted; empty when there is none."""
    root = Path(root)
    candidates = [root / ledger, root / ROUNDS_DIR, root / "rounds.json", *root.glob("*.ckpt")]
    return sorted({p for p in candidates if p.exists()})


def refuse_or_clear(root: str | Path, ledger: str, overwrite: bool) -> None:
    """Stop a fresh run in a folder that holds one, naming what is there and the ways on; with
    ``overwrite``, delete that run's files first."""
    found = run_files(root, ledger)
    if not found:
        return
    if not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
        raise FileExistsError(
            f"trainer.default_root_dir {str(root)!r} already holds a run ({names}). To resume it, add "
            "--ckpt_path last; to start another run, give another --trainer.default_root_dir; to replace "
            "this one, add --overwrite true."
        )
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
