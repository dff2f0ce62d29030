"""What is stored survives failures: datasets swapped in whole, checkpoints that can be read or are set aside."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.dataset import read_images, read_manifest
from sslflow.files import atomic_write
from sslflow.training.checkpoints import PREVIOUS_STATE_FILE, STATE_FILE, EpochCheckpoints


def _scans(root: Path, count: int) -> str:
    """A folder of ``count`` distinct 8 x 8 PNGs."""
    root.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (8, 8), dtype=np.uint8)).save(
            root / f"img{index}.png"
        )
    return str(root)


def test_replacing_a_dataset_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    config, output = IngestConfig(image_size=8), tmp_path / "out"
    directory = output / "dataset-scans"
    ingest_source(_scans(tmp_path / "three", 3), config, directory)
    before = read_manifest(directory)
    real_rename = Path.rename

    def rename_fails_for_the_new_dataset(self, target):
        if ".partial-" in self.name and Path(target) == directory:
            raise OSError("disk full (simulated)")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_fails_for_the_new_dataset)
    with pytest.raises(OSError, match="simulated"):
        ingest_source(_scans(tmp_path / "five", 5), config, directory)
    manifest = read_manifest(directory)
    assert manifest.equals(before), "the previous dataset must survive a failed replacement"
    assert (
        len(manifest) == 3 and len(read_images(directory, manifest)) == 3
    )  # its shards whole (read_images checks their hashes)
    assert sorted(path.name for path in output.iterdir()) == ["dataset-scans"]  # nothing half-written left beside it
    monkeypatch.setattr(Path, "rename", real_rename)
    ingest_source(str(tmp_path / "five"), config, directory)
    assert len(read_manifest(directory)) == 5 and sorted(path.name for path in output.iterdir()) == ["dataset-scans"]


def test_concurrent_atomic_writes_of_one_path_never_mix(tmp_path):
    """Each writer has its own temporary file: the result is one writer's bytes, whole."""
    target = tmp_path / "state.pt"
    payloads = [bytes([i]) * 2_000_000 for i in range(8)]
    threads = [
        threading.Thread(target=atomic_write, args=(target, lambda handle, p=p: handle.write(p))) for p in payloads
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert [path.name for path in tmp_path.iterdir()] == ["state.pt"]


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"weight": torch.full((2,), float(epoch))}}


def test_a_corrupt_checkpoint_is_set_aside_and_training_resumes_from_the_previous_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FLYTE_SDK_LOCAL_SANDBOX", str(tmp_path))
    checkpoints = EpochCheckpoints("pretrain_generic|dataset|config")
    checkpoints.save(_state(0))
    checkpoints.save(_state(1))
    assert checkpoints.load()["epoch"] == 1
    (checkpoints.local_dir / STATE_FILE).write_bytes(b"PK\x03\x04 cut short")  # a write that the disk did not finish
    with caplog.at_level(logging.WARNING, logger="ssl_models.checkpoints"):
        state = checkpoints.load()
    assert state["epoch"] == 0 and torch.equal(state["model"]["weight"], torch.zeros(2))
    assert "cannot be read" in caplog.text and STATE_FILE in caplog.text
    names = sorted(path.name for path in checkpoints.local_dir.iterdir())
    assert PREVIOUS_STATE_FILE in names and any(name.startswith(f"{STATE_FILE}.corrupt-") for name in names)
    assert checkpoints.load()["epoch"] == 0, "a second attempt (a Flyte retry) does not fail on the same file again"


def test_with_no_readable_checkpoint_training_starts_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYTE_SDK_LOCAL_SANDBOX", str(tmp_path))
    checkpoints = EpochCheckpoints("pretrain_case_pairs|dataset|config")
    checkpoints.local_dir.mkdir(parents=True)
    (checkpoints.local_dir / STATE_FILE).write_bytes(b"not a checkpoint")
    (checkpoints.local_dir / PREVIOUS_STATE_FILE).write_bytes(b"")
    assert checkpoints.load() is None


KILLED_INGEST = """
import sys
from pathlib import Path
from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
ingest_source(sys.argv[1], IngestConfig(image_size=64, chunk_images=40, shard_megabytes=1), Path(sys.argv[2]))
"""


def test_an_ingest_killed_while_it_writes_shards_leaves_no_dataset_and_a_rerun_completes(tmp_path):
    """SIGKILL while the chunks are being decoded and their shards written (as a preempted chunk pod dies): no
    dataset folder appears, half-written or not; the rerun writes the same dataset as a run never interrupted,
    with no partial file in it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    source = tmp_path / "scans"
    source.mkdir()
    for index in range(400):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (96, 96), dtype=np.uint8)).save(
            source / f"img{index}.png"
        )
    config = IngestConfig(image_size=64, chunk_images=40, shard_megabytes=1)
    expected, _, _ = ingest_source(str(source), config, tmp_path / "uninterrupted")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "SSLFLOW_INGEST_CACHE": "off"}
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_INGEST, str(source), str(tmp_path / "dataset")], env=environment
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".dataset.chunks-*/chunk-*/**/*.npy")):  # a chunk has written a shard
        assert worker.poll() is None and time.monotonic() < deadline, "the ingest ended before it could be killed"
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert not (tmp_path / "dataset").exists(), "a killed ingest leaves no dataset folder"
    observed, _, _ = ingest_source(str(source), config, tmp_path / "dataset")
    assert observed == expected
    assert not [path for path in (tmp_path / "dataset").rglob("*") if path.name.startswith(".partial")]
