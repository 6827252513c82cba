"""The self-edit ledger: one JSON line per evaluated self-edit, appended whole, rolled back on resume."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def read_ledger(path: str | Path) -> list[dict]:
    """The ledger's records; a line that is not a JSON record (a truncated write, a corrupt byte) is
    skipped with a warning naming its line number, and every other line is kept."""
    path, records = Path(path), []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            warnings.warn(f"{path}: line {number}: skipped, not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(record, dict):
            warnings.warn(f"{path}: line {number}: skipped, a {type(record).__name__} and not a record")
            continue
        records.append(record)
    return records


class Ledger:
    """Append-only JSONL file whose synced size is stored in checkpoints.

    Resuming truncates the file to the size recorded in the checkpoint, so records written
    after that checkpoint are dropped and re-done exactly once.
    """

    def __init__(self, path: str | Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        size = self.path.stat().st_size
        if offset > size:
            raise RuntimeError(
                f"{self.path}: {size} bytes, but the checkpoint recorded {offset}; was the ledger replaced?"
            )
        with open(self.path, "r+b") as f:
            f.truncate(offset)

    def append(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        with open(self.path, "ab") as f:
            f.write(data)  # one write of whole lines

    def sync(self) -> int:
        """Flush to disk and return the file size to store in a checkpoint."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.path.stat().st_size

    def read(self) -> list[dict]:
        return read_ledger(self.path)
