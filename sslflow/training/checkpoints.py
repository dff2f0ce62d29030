"""Per-epoch training checkpoints so a preempted or killed training task resumes, losing at most one epoch.

Two places, both written after every epoch (locally the previous epoch's state is kept beside the latest):
- the orchestrator's checkpoint (``remote``: on Flyte, ``current_context().checkpoint``, passed in by
  the task): on a cluster, a retry of the same execution receives the previous attempt's checkpoint.
- a local folder keyed by the task's inputs, under $FLYTE_SDK_LOCAL_SANDBOX/checkpoints (or ~/.flyte):
  a local run killed with ``kill -9`` and started again with the same inputs resumes from it.
The folder is removed when the task finishes, so a finished run never resumes a stale state.

A checkpoint that cannot be read (a disk that filled up, a copy cut short) is set aside with a warning
(renamed ``*.corrupt-<time>``) and the next candidate is tried: the previous epoch's state, else a start
from scratch. A retry never fails again and again on the same unreadable file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

import torch

from sslflow.files import atomic_write

log = logging.getLogger("ssl_models.checkpoints")
STATE_FILE = "state.pt"
PREVIOUS_STATE_FILE = "state.previous.pt"


class RemoteCheckpoint(Protocol):
    """What EpochCheckpoints needs of an orchestrator's checkpoint (flytekit's Checkpoint has it)."""

    def restore(self) -> Path | str | None: ...

    def save(self, path: Path) -> None: ...


def checkpoint_root() -> Path:
    sandbox = os.environ.get("FLYTE_SDK_LOCAL_SANDBOX")
    return Path(sandbox) / "checkpoints" if sandbox else Path.home() / ".flyte" / "checkpoints"


class EpochCheckpoints:
    """Save and restore a training state dict; ``key`` names the training run (stage + input hashes)."""

    def __init__(self, key: str, remote: RemoteCheckpoint | None = None):
        self.local_dir = checkpoint_root() / hashlib.sha256(key.encode()).hexdigest()[:24]
        self.remote = remote

    def load(self) -> dict | None:
        """The latest readable state: the previous remote attempt's, else the local latest, else the local
        previous epoch's, else None (train from scratch)."""
        candidates = []
        if self.remote is not None:
            restored = self.remote.restore()
            if restored is not None:
                candidates.append(Path(restored) / STATE_FILE)
        candidates += [self.local_dir / STATE_FILE, self.local_dir / PREVIOUS_STATE_FILE]
        for path in candidates:
            if path.is_file():
                state = _read_or_set_aside(path)
                if state is not None:
                    log.info("found a checkpoint after epoch %d in %s", state["epoch"], path)
                    return state
        return None

    def save(self, state: dict) -> None:
        """Write atomically (temp file + rename): a kill mid-write leaves the previous epoch's state intact."""
        path = self.local_dir / STATE_FILE
        if path.is_file():
            os.replace(path, self.local_dir / PREVIOUS_STATE_FILE)
        atomic_write(path, lambda handle: torch.save(state, handle))
        if self.remote is not None:
            self.remote.save(path)

    def clear(self) -> None:
        shutil.rmtree(self.local_dir, ignore_errors=True)


def _read_or_set_aside(path: Path) -> dict | None:
    """The state dict at ``path``; None (with a warning, the file renamed aside) if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError("not a training state (no 'epoch')")
        return state
    except Exception as error:  # noqa: BLE001 - any unreadable file: torch, zip and pickle raise many kinds
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(path, aside)
        except OSError:  # a read-only restored copy: skipping it is enough
            aside = path
        log.warning(
            "checkpoint %s cannot be read (%s: %s); set aside as %s, trying the previous one",
            path,
            type(error).__name__,
            error,
            aside.name,
        )
        return None
