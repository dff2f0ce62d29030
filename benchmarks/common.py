"""Helpers shared by the benchmark scripts: where results go and what machine made them."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True)
        info["dirty"] = bool(status.stdout.strip())  # uncommitted changes to tracked files: the commit is not the whole story
    except (OSError, subprocess.CalledProcessError):
        info["commit"], info["dirty"] = "unknown", None
    return info


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, or this process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write {command, machine, date, ...payload} as JSON; returns the path."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    path = out_dir / f"{name}-{device}-{now:%Y%m%d}.json"
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": now.isoformat(timespec="seconds"), "machine": machine(), **payload}
    path.write_text(json.dumps(record, indent=2))
    return path


def parse_arguments(description: str, small_run_flag: str = "--quick", extra_flags: dict[str, str] | None = None) -> argparse.Namespace:
    """The flags every benchmark takes: a small CPU-sized run, and where to write the result; extra_flags: {flag: help}."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(small_run_flag, action="store_true", help="a small run that fits a 2-core CPU")
    for flag, text in (extra_flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args()
