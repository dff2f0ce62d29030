"""Per-epoch training checkpoints so a preempted or killed training task resumes, losing at most one epoch.

Two places, both written after every epoch:
- the orchestrator's checkpoint (``remote``: on Flyte, ``current_context().checkpoint``, passed in by
  the task): on a cluster, a retry of the same execution receives the previous attempt's checkpoint.
- a local folder keyed by the task's inputs, under $FLYTE_SDK_LOCAL_SANDBOX/checkpoints (or ~/.flyte):
  a local run killed with ``kill -9`` and started again with the same inputs resumes from it.
The folder is removed when the task finishes, so a finished run never resumes a stale state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

import torch

from sslflow.files import atomic_write

log = logging.getLogger("ssl_models.checkpoints")
STATE_FILE = "state.pt"


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
        """The latest saved state: the previous remote attempt's, else the local folder's, else None."""
        candidates = []
        if self.remote is not None:
            restored = self.remote.restore()
            if restored is not None:
                candidates.append(Path(restored) / STATE_FILE)
        candidates.append(self.local_dir / STATE_FILE)
        for path in candidates:
            if path.is_file():
                state = torch.load(path, map_location="cpu", weights_only=True)
                log.info("found a checkpoint after epoch %d in %s", state["epoch"], path.parent)
                return state
        return None

    def save(self, state: dict) -> None:
        """Write atomically (temp file + rename): a kill mid-write leaves the previous epoch's state intact."""
        path = self.local_dir / STATE_FILE
        atomic_write(path, lambda handle: torch.save(state, handle))
        if self.remote is not None:
            self.remote.save(path)

    def clear(self) -> None:
        shutil.rmtree(self.local_dir, ignore_errors=True)
