"""A run's ``metrics.jsonl``: one JSON object per epoch, kept in step with the checkpoint it resumes from."""
from __future__ import annotations

import json
from pathlib import Path

from .._io import atomic_path


def read_run_log(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


class RunLog:
    """Appends one record per epoch; opening it drops the lines of epochs past ``keep_until_epoch`` (written
    after the checkpoint a resumed run starts from), so the log never holds an epoch twice."""

    def __init__(self, path: str | Path, keep_until_epoch: int):
        self.path = Path(path)
        if self.path.exists():
            kept = [r for r in read_run_log(self.path) if r.get("epoch", 0) <= keep_until_epoch]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
