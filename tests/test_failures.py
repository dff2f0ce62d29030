"""Failures classified for Flyte: infrastructure (retried) against the input's or the code's (not retried); a pod
given GPUs that it cannot use fails at once; the memory budget reads cgroup v1 and v2."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.distributed as dist
from botocore.exceptions import ClientError, IncompleteReadError
from flytekit.exceptions.user import FlyteRecoverableException

from ssl_models.data import cgroup_memory_limit
from ssl_models.device import GpuUnavailable, check_gpus
from sslflow.data.sources.s3 import ObjectStoreUnavailable, s3_errors
from sslflow.data.types import SourceError
from sslflow.errors import Refusal
from sslflow.failures import infrastructure_failure, killed_by_signal
from sslflow.tracking.server import TrackingServerUnavailable
from tasks.shared import RETRIED, outages_are_recoverable
from tasks.training_pods import GPUS_PER_POD_VARIABLE, gpus_usable


def _failing(error: BaseException):
    @outages_are_recoverable
    def task_body():
        raise error

    return task_body


@pytest.mark.parametrize(
    "error",
    [
        dist.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed."),
        TrackingServerUnavailable(
            "MLflow tracking server http://mlflow:5000 did not answer", service="MLflow tracking server"
        ),
        ObjectStoreUnavailable("reading s3://scans/a.png: the S3 endpoint did not answer", service="S3 endpoint"),
    ],
)
def test_an_infrastructure_failure_is_raised_as_recoverable(error):
    with pytest.raises(FlyteRecoverableException, match=f"error={RETRIED}") as raised:
        _failing(error)()
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        SourceError("a.png: zero-byte file; remove it or set IngestConfig.skip_unreadable"),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        ValueError("a bug"),
    ],
)
def test_bad_input_and_bugs_are_not_retried(error):
    with pytest.raises(type(error)):
        _failing(error)()
    assert infrastructure_failure(error) is None


def test_an_infrastructure_failure_is_found_in_the_cause_chain():
    try:
        try:
            raise dist.DistNetworkError("connection reset by peer")
        except dist.DistNetworkError as network:
            raise RuntimeError("all_gather failed") from network
    except RuntimeError as error:
        assert infrastructure_failure(error) == "the process group (NCCL/gloo, rendezvous)"
    assert infrastructure_failure(Refusal("metadata.csv row 3: no case_id")) is None


@pytest.mark.parametrize(
    "error",
    [
        ClientError(
            {
                "Error": {"Code": "RequestTimeout", "Message": "socket not read"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            },
            "GetObject",
        ),
        ClientError(
            {"Error": {"Code": "SlowDown", "Message": "reduce your rate"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
            "GetObject",
        ),
        IncompleteReadError(actual_bytes=10, expected_bytes=100),
    ],
)
def test_s3_retries_used_up_are_an_outage_not_a_refusal(error):
    with pytest.raises(ObjectStoreUnavailable):
        with s3_errors("reading s3://scans/a.png"):
            raise error


def test_a_missing_s3_object_stays_a_refusal():
    missing = ClientError(
        {"Error": {"Code": "NoSuchKey", "Message": "gone"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject"
    )
    with pytest.raises(SourceError):
        with s3_errors("reading s3://scans/a.png"):
            raise missing


def test_a_pod_given_gpus_it_cannot_use_fails_at_once_naming_driver_and_cuda(monkeypatch, tmp_path):
    """This machine has no usable GPU: a pod that requested one (the task's environment) must not train on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    version_file = tmp_path / "version"
    version_file.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: the kernel module's line names the driver
    with pytest.raises(
        GpuUnavailable,
        match=rf"requested 2 GPU\(s\) but torch can use 0: .*CUDA {torch.version.cuda or 'none'}.*470\.256\.02",
    ):
        check_gpus(2, version_file=version_file)
    with pytest.raises(GpuUnavailable, match=r"none found \(no nvidia-smi on PATH"):
        check_gpus(1, version_file=tmp_path / "absent")
    check_gpus(0)  # a CPU pod: nothing to check

    ran = []
    monkeypatch.setenv(GPUS_PER_POD_VARIABLE, "1")
    with pytest.raises(GpuUnavailable):
        gpus_usable(lambda: ran.append(1))()
    assert ran == [], "the task body never starts on the CPU"
    monkeypatch.delenv(GPUS_PER_POD_VARIABLE)
    gpus_usable(lambda: ran.append(1))()  # locally (no GPUs requested) the task runs where it is
    assert ran == [1]


def test_a_signal_exit_code_names_the_signal():
    """The Elastic agent reports a worker killed by a signal as a negative exit code (a real one: test_pod_elastic)."""
    assert killed_by_signal(-signal.SIGKILL) == "SIGKILL" and killed_by_signal(1) is None


def test_the_memory_budget_reads_cgroup_v2_and_v1(tmp_path):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "memory.max").write_text("34359738368\n")
    assert cgroup_memory_limit(tmp_path / "v2") == 32 * 2**30
    (tmp_path / "v2" / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path / "v2") is None
    (tmp_path / "v1" / "memory").mkdir(parents=True)
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text("17179869184\n")
    assert cgroup_memory_limit(tmp_path / "v1") == 16 * 2**30
    assert cgroup_memory_limit(tmp_path / "none") is None


def test_every_task_given_gpus_checks_them_before_it_starts(monkeypatch):
    """Each task whose pod requests GPUs (its environment names GPUS_PER_POD_VARIABLE: tasks/training_pods.py) fails
    at once, before reading an input, when torch cannot use them; a task without GPUs does not check."""
    from tasks import finetune, ingest, pretrain, self_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    given_gpus = []
    for module in (pretrain, finetune, self_train, ingest):
        for task in vars(module).values():
            if getattr(task, "environment", None) and GPUS_PER_POD_VARIABLE in task.environment:
                given_gpus.append(task.name)
                monkeypatch.setenv(GPUS_PER_POD_VARIABLE, task.environment[GPUS_PER_POD_VARIABLE])
                with pytest.raises(GpuUnavailable):
                    task.task_function(**dict.fromkeys(task.python_interface.inputs))
    assert len(given_gpus) == 7 and not any(name.startswith("tasks.ingest") for name in given_gpus), given_gpus
