"""The pretraining task's own resume, on two ranks: its pod killed after a checkpoint, the retry resumes from the
previous attempt's checkpoint prefix and ends with weights bitwise equal to an uninterrupted run's.

Each attempt runs what a pod of ``pretrain_generic`` runs: ``pyflyte-execute`` with the task's resolver, its inputs as a
literal file, ``--checkpoint-path`` (this attempt's checkpoint prefix) and ``--prev-checkpoint`` (the previous
attempt's, as Flyte gives a retry), and the Elastic plugin starting two gloo worker ranks. Every attempt has a fresh
sandbox (a new pod: no local checkpoint), so the retry can resume only from the previous attempt's prefix: the
code path of tasks/pretrain.py (EpochCheckpoints on current_context().checkpoint, rank 0 reads, every rank resumes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from flyteidl.core import literals_pb2
from flytekit.models.literals import LiteralMap
from pod_harness import python_value

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
INPUTS_SCRIPT = f"""
import sys
from pod_harness import literals
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.tracking.runs import start_parent_run
from tasks.pretrain import pretrain_generic
from tasks.ingest import source_fingerprint
from workflows.ingest import ingest

run_id = start_parent_run("task-resume-test", {{}})
fingerprint = source_fingerprint(source="mnist-5k")
dataset = ingest(source="mnist-5k", fingerprint=fingerprint, config=IngestConfig(max_images=400), parent_run_id=run_id)
config = PretrainConfig(method="moco", epochs={EPOCHS}, batch_size=32, seed=5, method_settings={{"queue_size": 64}})
inputs = literals(pretrain_generic, dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)
open(sys.argv[1], "wb").write(inputs.to_flyte_idl().SerializeToString())
"""


def _environment(work: Path, attempt: str) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=f"{PROJECT_ROOT}{os.pathsep}{PROJECT_ROOT / 'tests'}",
        SSLFLOW_NPROC_PER_NODE="2",
        OMP_NUM_THREADS="1",
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        FLYTE_SDK_LOCAL_SANDBOX=str(work / f"sandbox-{attempt}"),
    )


def _start(work: Path, attempt: str, previous: str | None) -> subprocess.Popen:
    """pyflyte-execute of pretrain_generic as its pod runs it, checkpointing under work/checkpoints/<attempt>."""
    command = [
        str(Path(sys.executable).parent / "pyflyte-execute"),
        "--inputs",
        str(work / "inputs.pb"),
        "--output-prefix",
        str(work / "out" / attempt),
        "--raw-output-data-prefix",
        str(work / "raw" / attempt),
        "--checkpoint-path",
        str(work / "checkpoints" / attempt),
        "--prev-checkpoint",
        str(work / "checkpoints" / previous) if previous else '""',
        "--resolver",
        "flytekit.core.python_auto_container.default_task_resolver",
        "--",
        "task-module",
        "tasks.pretrain",
        "task-name",
        "pretrain_generic",
    ]
    (work / "out" / attempt).mkdir(parents=True)
    log = open(work / f"{attempt}.log", "w")
    return subprocess.Popen(
        command, cwd=work, env=_environment(work, attempt), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _finish(work: Path, attempt: str, process: subprocess.Popen) -> dict[str, torch.Tensor]:
    """The final encoder weights the attempt returned (its EncoderCheckpoint output)."""
    from tasks.shared import EncoderCheckpoint

    process.wait(timeout=400)
    log = (work / f"{attempt}.log").read_text()
    assert process.returncode == 0 and not (work / "out" / attempt / "error.pb").exists(), log[-4000:]
    message = literals_pb2.LiteralMap()
    message.ParseFromString((work / "out" / attempt / "outputs.pb").read_bytes())
    output = python_value(LiteralMap.from_flyte_idl(message).literals["o0"], EncoderCheckpoint)
    return torch.load(output.checkpoint.download(), weights_only=True)


def _saved_epoch(state: Path) -> int:
    try:
        return torch.load(state, weights_only=True)["epoch"]
    except Exception:  # not there yet, or being copied
        return -1


def test_a_killed_two_rank_pretraining_pod_resumes_from_the_previous_attempts_checkpoint_to_bitwise_equal_weights(
    tmp_path,
):
    setup = subprocess.run(
        [sys.executable, "-c", INPUTS_SCRIPT, str(tmp_path / "inputs.pb")],
        cwd=tmp_path,
        env=_environment(tmp_path, "setup"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    uninterrupted = _finish(tmp_path, "uninterrupted", _start(tmp_path, "uninterrupted", None))

    first = _start(tmp_path, "attempt-0", None)
    deadline = time.monotonic() + 300
    while (
        _saved_epoch(tmp_path / "checkpoints" / "attempt-0" / "state.pt") < 0
        and first.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert first.poll() is None, (
        "the first attempt ended before it could be killed:\n" + (tmp_path / "attempt-0.log").read_text()[-3000:]
    )
    os.killpg(first.pid, signal.SIGKILL)  # the pod is gone: pyflyte-execute and both ranks
    first.wait(timeout=30)
    saved = _saved_epoch(tmp_path / "checkpoints" / "attempt-0" / "state.pt")
    assert 0 <= saved < EPOCHS - 1 and not (tmp_path / "out" / "attempt-0" / "outputs.pb").exists()

    resumed = _finish(tmp_path, "attempt-1", _start(tmp_path, "attempt-1", "attempt-0"))
    log = (tmp_path / "attempt-1.log").read_text()
    resumed_after = [int(epoch) for epoch in re.findall(r"resuming contrastive pretraining after epoch (\d+)", log)]
    assert resumed_after and set(resumed_after) == {saved}, log[-3000:]  # every rank resumed the saved epoch
    assert len(resumed_after) == 2, "both ranks resume (rank 0 read the prefix, rank 1 got it by broadcast)"
    assert uninterrupted.keys() == resumed.keys() and all(
        torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted
    )
