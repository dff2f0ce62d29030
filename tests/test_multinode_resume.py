"""Multi-node resume (issue 10): two torchrun-style workers (gloo on CPU) are killed with SIGKILL after
epoch k's checkpoint and started again; both resume at epoch k + 1 from rank 0's checkpoint and end with
identical weights.

Each worker is a separate process with its own local sandbox (a node's own disk), so only the
orchestrator's checkpoint (flytekit's SyncCheckpoint, as Flyte gives a retry the previous attempt's)
is shared, and only rank 0 writes and reads it: rank 1 gets the state by broadcast (tasks/pretrain.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EPOCHS, KILLED_AFTER_EPOCH = 4, 1

WORKER = """
import json, os, sys, time
from pathlib import Path
import torch
from flytekit.core.checkpointer import SyncCheckpoint
from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.distributed import init_from_environment
from ssl_models.encoders import build_encoder
from ssl_models.train import PretrainConfig, pretrain_contrastive
from sslflow.training.checkpoints import EpochCheckpoints

shared, attempt, hang_after, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(1)
rank = init_from_environment("cpu").rank
images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
config = PretrainConfig(epochs=%(epochs)d, batch_size=8, augment=AugmentConfig(output_size=16))
torch.manual_seed(100 * attempt + rank)  # weights differ per rank and attempt: only the resumed state can make them agree
encoder = build_encoder("small_cnn", 1)
source = str(shared / f"attempt-{attempt - 1}") if attempt > 0 else None
checkpoints = EpochCheckpoints("multinode-test", remote=SyncCheckpoint(str(shared / f"attempt-{attempt}"), source))

def end_of_epoch(epoch, metrics, state_fn):
    if rank == 0:
        checkpoints.save(state_fn())
        (shared / f"saved-{attempt}-{epoch}").touch()
    if epoch == hang_after:
        time.sleep(600)  # where SIGKILL finds the job: after this epoch's checkpoint

resume_state = checkpoints.load() if rank == 0 else None
history = pretrain_contrastive(encoder, InMemoryPairs(images, list(range(40))), config, on_epoch_end=end_of_epoch, resume_state=resume_state)
out.write_text(json.dumps({"epochs": [h["epoch"] for h in history], "resumed": resume_state is not None}))
torch.save({k: v.detach() for k, v in encoder.named_parameters()}, out.with_suffix(".pt"))
""" % {"epochs": EPOCHS}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(tmp_path: Path, attempt: int, hang_after: int) -> list[subprocess.Popen]:
    """Both ranks of one attempt, as torchrun starts them: RANK / WORLD_SIZE / MASTER_* in the environment."""
    script, port = tmp_path / "worker.py", _free_port()
    script.write_text(WORKER)
    workers = []
    for rank in range(2):
        env = os.environ | {
            "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "PYTHONPATH": str(PROJECT_ROOT), "FLYTE_SDK_LOCAL_SANDBOX": str(tmp_path / f"node-{rank}"), "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        out = tmp_path / f"result-{attempt}-{rank}.json"
        workers.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "shared"), str(attempt), str(hang_after), str(out)], env=env))
    return workers


def test_two_workers_killed_with_sigkill_resume_from_the_same_epoch_with_identical_weights(tmp_path):
    (tmp_path / "shared").mkdir()
    first = _start(tmp_path, attempt=0, hang_after=KILLED_AFTER_EPOCH)
    deadline = time.time() + 90
    while not (tmp_path / "shared" / f"saved-0-{KILLED_AFTER_EPOCH}").exists():
        assert time.time() < deadline and all(worker.poll() is None for worker in first), "first attempt died or never checkpointed"
        time.sleep(0.2)
    for worker in first:
        worker.send_signal(signal.SIGKILL)
    assert [worker.wait() for worker in first] == [-signal.SIGKILL] * 2
    assert not any((tmp_path / "node-1").rglob("state*.pt")), "rank 1's node holds no checkpoint: only rank 0 writes"
    shutil.rmtree(tmp_path / "node-0")  # the restarted pods land on fresh nodes: only the shared checkpoint is left

    second = _start(tmp_path, attempt=1, hang_after=-1)
    assert [worker.wait(timeout=120) for worker in second] == [0, 0]
    results = [json.loads((tmp_path / f"result-1-{rank}.json").read_text()) for rank in range(2)]
    resumed_epochs = list(range(KILLED_AFTER_EPOCH + 1, EPOCHS))
    assert results[0]["epochs"] == results[1]["epochs"] == resumed_epochs
    assert results[0]["resumed"] and not results[1]["resumed"], "rank 0 read the checkpoint; rank 1 got it by broadcast"
    weights = [torch.load(tmp_path / f"result-1-{rank}.pt", weights_only=True) for rank in range(2)]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5), name
