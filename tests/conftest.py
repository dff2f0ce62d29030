"""Test isolation: every test session (each pytest-xdist worker is one) gets its own HOME (Flyte's local cache), sandbox
and MLflow store; with several workers, each worker's PyTorch, and its child processes', gets its share of the cores."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

_session_root = Path(tempfile.mkdtemp(prefix="sslflow-tests-"))
os.environ["HOME"] = str(_session_root / "home")
os.environ["FLYTE_SDK_LOCAL_SANDBOX"] = str(_session_root / "sandbox")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_session_root / 'mlflow.db'}"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
(_session_root / "home").mkdir()
# pytest-xdist runs one session per worker (`-n`, pyproject's addopts); each worker, and every process it starts
# (pyflyte, pods, torch-elastic workers, benchmark runs), gets its share of the cores as PyTorch's thread count, as a
# pod gets its CPU limit (ssl_models.cpu_threads). With every core's worth of threads in each, OpenMP's threads would
# spin against each other: a linear probe took 4.5x its wall time with two threads beside a busy core
# (benchmarks/probe_threads.py).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# The files that run longest (end-to-end pipelines, pods, killed and resumed training, live tracking servers, benchmark
# smoke runs: a minute or more each), started first, longest first. pytest-xdist hands each worker whole files
# (pyproject's addopts: --dist loadfile, in this order); one of these begun last would keep one worker busy for minutes
# after the other has finished. benchmarks/suite_order.py replays the scheduling on a run's per-test times: with the 9
# files listed before, the last worker ended 3.8-4.7% later on the times of two runs (benchmarks/results/suite_order-*).
LONGEST_FIRST = (
    "test_pipeline_pods.py",
    "test_task_resume_multirank.py",
    "test_registry.py",
    "test_pipeline_user_folder.py",
    "test_pipeline_e2e.py",
    "test_pods.py",
    "test_resume.py",
    "test_multirank.py",
    "test_self_training.py",
    "test_shards.py",
    "test_engine.py",
    "test_pod_elastic.py",
    "test_fingerprint.py",
    "test_evaluation.py",
    "test_tracking_store.py",
    "test_s3_source.py",
    "test_refusals.py",
    "test_elastic.py",
)
assert all((Path(__file__).parent / name).is_file() for name in LONGEST_FIRST), "a LONGEST_FIRST file was renamed"


def pytest_collection_modifyitems(items):
    """The LONGEST_FIRST files' tests first, in that order; the other files after them, in pytest's order."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's HOME, Flyte sandbox and MLflow store after a passing run (kept to look into otherwise)."""
    if exitstatus == 0:
        shutil.rmtree(_session_root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _progress_lines_reach_caplog(monkeypatch):
    """show_progress() stops its loggers propagating (one line each on a console whose root logger a dependency gave a
    handler); a test that ran a task in this process before must still read those lines with caplog."""
    from sslflow.training.progress import PROGRESS_LOGGERS

    for name in PROGRESS_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
