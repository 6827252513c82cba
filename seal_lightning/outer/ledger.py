"""The self-edit ledger: one JSON line per evaluated self-edit, appended whole, rolled back on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path


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
            raise RuntimeError(f"{self.path}: {size} bytes, but the checkpoint recorded {offset}; was the ledger replaced?")
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
        return [json.loads(line) for line in self.path.read_text().splitlines()]
