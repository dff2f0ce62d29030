"""kill -9 a pretraining task mid-run; the rerun resumes from the last completed epoch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPT = """
from flytekit import workflow
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from tasks.ingest import source_fingerprint
from workflows.ingest import ingest
from tasks.ingest import source_fingerprint
from tasks.pretrain import pretrain_generic
from sslflow.tracking.runs import start_parent_run

@workflow
def pretrain_only(run_id: str):
    fingerprint = source_fingerprint(source="mnist-5k")
    dataset = ingest(
        source="mnist-5k", fingerprint=fingerprint, config=IngestConfig(max_images=600), parent_run_id=run_id
    )
    config = PretrainConfig(epochs=6, batch_size=64)
    pretrain_generic(dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)

pretrain_only(run_id=start_parent_run("resume-test", {}))
print("DONE")
"""
EPOCHS = 6


def _start(tmp_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_killed_pretraining_resumes_from_last_completed_epoch(tmp_path):
    env = dict(os.environ, FLYTE_SDK_LOCAL_SANDBOX=str(tmp_path / "sandbox"))
    checkpoints = tmp_path / "sandbox" / "checkpoints"
    first = _start(tmp_path, env)
    saved_epoch, deadline = -1, time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        states = list(checkpoints.glob("*/state.pt"))
        if states:
            saved_epoch = torch.load(states[0], weights_only=True)["epoch"]
            if saved_epoch >= 1:
                break
        time.sleep(0.05)
    assert first.poll() is None, f"first run ended before it could be killed:\n{first.stdout.read()}"
    assert 1 <= saved_epoch < EPOCHS - 1, "no checkpoint appeared in time"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    second = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    resumed = re.search(r"resuming contrastive pretraining after epoch (\d+)", output)
    assert resumed, output
    resumed_after = int(resumed.group(1))
    assert resumed_after >= saved_epoch  # at most the epoch in flight at the kill is lost
    trained = [int(k) for k in re.findall(rf"pretrain epoch (\d+)/{EPOCHS}", output)]
    assert trained == list(range(resumed_after + 2, EPOCHS + 1))
    assert "DONE" in output
    assert not list(checkpoints.glob("*/state.pt")), "a finished run must clear its resume state"
