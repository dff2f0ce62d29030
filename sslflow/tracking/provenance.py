"""What code produced a result: recorded on every registered model version."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess

from sslflow.tracking.store import PROJECT_ROOT


def code_version() -> str:
    """The git commit (``-dirty`` with uncommitted changes), else the Flyte task version (a registered
    workflow on a cluster), else the installed sslflow version."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return f"git:{described.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("FLYTE_INTERNAL_TASK_VERSION"):
        return f"flyte:{os.environ['FLYTE_INTERNAL_TASK_VERSION']}"
    try:
        return f"sslflow=={importlib.metadata.version('sslflow')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
