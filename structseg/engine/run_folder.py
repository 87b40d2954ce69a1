"""A run folder belongs to one run: a lock held while a process trains in it, and a resume that refuses
settings which would make the folder describe two different runs.

The lock is ``RUN/.lock`` (JSON: pid, host, start time), created with ``O_EXCL``; a lock whose process is
gone (``kill -9``) is stale and taken over. Resuming compares the new config with the one the checkpoint
was trained with: any difference in a setting that shapes the run (model, data, augmentation, optimiser,
schedule, epochs, ...) is refused with the differing keys, unless the user allows it explicitly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

from .._io import process_alive
from ..config import Config
from ..errors import ConfigError, StructsegError

LOCK_NAME = ".lock"
# settings that change how fast or how visibly a run goes, never what it computes
FREE_TO_CHANGE = ("data.workers", "data.cache", "train.threads", "train.tensorboard", "train.val_every")


class RunLock:
    """``with RunLock(folder):`` — exclusive use of a run folder by this process (stale locks recovered)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunLock":
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and (holder.get("host") != record["host"] or process_alive(int(holder.get("pid", -1)))):
                    raise StructsegError(
                        f"{self.path.parent}: run folder in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('started')}); wait for it, or use another --out "
                        f"(if that process is gone, delete {self.path})")
                self.path.unlink(missing_ok=True)  # stale: its process was killed
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return self
        raise StructsegError(f"{self.path}: could not take the run folder's lock")

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) and "pid" in data else None
        except (OSError, ValueError):
            return None  # unreadable or half-written by a killed process: stale

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("args", "crf"):
            out |= _flatten(v, key + ".")
        else:
            out[key] = v
    return out


def config_changes(trained_with: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """``(key, old, new)`` for every setting that shapes the run and differs from the checkpoint's config.

    Keys that the checkpoint's config lacks (written by an older version) count as their defaults.
    """
    old = _flatten(dataclasses.asdict(Config())) | _flatten(trained_with)
    new = _flatten(cfg.to_dict())
    return [(k, old.get(k), v) for k, v in new.items() if k not in FREE_TO_CHANGE and old.get(k) != v]


def check_resume(trained_with: dict | None, cfg: Config, folder: Path, allow_changes: bool) -> list[str]:
    """Refuse to resume ``folder`` with changed settings unless ``allow_changes``; returns the changes."""
    changes = config_changes(trained_with or {}, cfg)
    text = [f"{k}: {old!r} -> {new!r}" for k, old, new in changes]
    if changes and not allow_changes:
        raise ConfigError(f"{folder}: the run was trained with other settings ({'; '.join(text)}); resume with the "
                          "same config, use another --out, or pass --allow-changes to continue with these "
                          "(the old config is kept as config.before_epoch_N.yaml)")
    return text
