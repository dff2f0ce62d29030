"""Helpers shared by the benchmark scripts: where results go and what machine made them."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("benchmarks", "images", "ssl_models", "sslflow", "tasks", "workflows")
CODE_FILES = ("Makefile", "pyproject.toml", "requirements.lock")


def code_sha256(root: Path = PROJECT_ROOT) -> str:
    """sha256 of the code as it is on disk (every .py file of CODE_FOLDERS, and CODE_FILES), committed or not:
    with the commit and the dirty flag, it names exactly what a result ran."""
    digest = hashlib.sha256()
    paths = sorted(p for folder in CODE_FOLDERS for p in (root / folder).rglob("*.py")) + [
        root / name for name in CODE_FILES
    ]
    for path in paths:
        if path.is_file():
            digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cpu_model() -> dict:
    """The CPU's model name and the widest vector instruction sets it offers (float results and speed differ between
    CPUs: PyTorch picks its kernels by them), and the kernels PyTorch runs here (ATEN_CPU_CAPABILITY can lower them)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_instruction_sets": [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if name in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine() -> dict:
    info = {
        **cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "code_sha256": code_sha256(),
        # other work on the machine while the benchmark ran (1, 5, 15 minutes): times measured with a load above
        # cpu_count are shared with it; ratios measured side by side share it alike only roughly
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":!benchmarks/results"],
            capture_output=True,
            text=True,
            check=True,
            cwd=PROJECT_ROOT,
        )
        # changed or new (untracked, not ignored) files: the commit is not the whole story (a new script is not in it);
        # result files are outputs, not code: a benchmark that rewrites its own result as it goes stays clean
        info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        info["commit"], info["dirty"] = "unknown", None
    return info


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, or this process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_WRITTEN: dict[tuple[Path, str], Path] = {}  # (folder, name) -> the file this process writes that result to


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write {command, machine, date, ...payload} as JSON to <name>-<device>-<yyyymmdd>.json, or, when a result of
    that name is there already from another run (a committed one), to <name>-<device>-<yyyymmdd>T<hhmm>.json; a run
    that writes its result again (after each seed, say) updates its own file. Returns the path."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    if (out_dir, name) not in _WRITTEN:
        path = out_dir / f"{name}-{device}-{now:%Y%m%d}.json"
        _WRITTEN[(out_dir, name)] = out_dir / f"{name}-{device}-{now:%Y%m%dT%H%M}.json" if path.exists() else path
    path = _WRITTEN[(out_dir, name)]
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": now.isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2))
    return path


def parse_arguments(
    description: str, small_run_flag: str = "--quick", extra_flags: dict[str, str] | None = None
) -> argparse.Namespace:
    """The flags every benchmark takes: a small CPU-sized run, and where to write the result; extra_flags: {flag:
    help}."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(small_run_flag, action="store_true", help="a small run that fits a 2-core CPU")
    for flag, text in (extra_flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args()


def fashion_mnist_split(*, quick: bool):
    """(train images, train labels, test images, test labels) of Fashion-MNIST for the kNN benchmarks: the first
    4,096 training and 2,000 test images with ``quick``, else all 60,000 and 10,000. Images (N, 1, 28, 28) uint8,
    labels (N,) int."""
    import numpy as np

    from sslflow.data.sources.builtin import read_fashion_mnist

    fashion = read_fashion_mnist()
    labels = np.array([int(label) for label in fashion.labels])
    train_count, test_count = (4096, 2000) if quick else (60000, 10000)
    return (
        fashion.pixels[:train_count],
        labels[:train_count],
        fashion.pixels[60000 : 60000 + test_count],
        labels[60000 : 60000 + test_count],
    )
