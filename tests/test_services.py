"""A service the run needs that does not answer: refused in seconds when the run starts, naming the service and its URI
(never credentials); the same outage inside a task is recoverable (Flyte retries it), not bad input.

Every address here is a real one on this machine: a loopback port nothing listens on, or one that accepts
connections and never answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flytekit.exceptions.user import FlyteRecoverableException
from live_mlflow import free_port, mlflow_at

from sslflow.config import IngestConfig, ValidationConfig
from sslflow.errors import Refusal
from sslflow.services import UnreachableService, check_services
from tasks.data_run import start_data_run
from tasks.ingest import plan_ingest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel completes the handshake) and never answers a request."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def closed_s3_endpoint(monkeypatch) -> str:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return endpoint


def test_the_pipeline_refuses_an_unreachable_tracking_server_in_seconds_before_any_task(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "COLUMNS": "200",
        "FLYTE_SDK_LOCAL_SANDBOX": str(tmp_path / "sandbox"),
        "HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": f"http://someone:hunter2@127.0.0.1:{port}",
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pyflyte"), "run", "workflows/pipeline.py", "ssl_pipeline"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and time.monotonic() - started < 90, output
    assert (
        "Refused (UnreachableService)" in result.stderr
        and f"MLflow tracking server http://127.0.0.1:{port} " in result.stderr
    ), output
    assert "hunter2" not in output and "someone" not in output and "Traceback" not in output, output
    # refused by the run's first tasks (tracking_store or source_fingerprint, in pods on a cluster): nothing listed,
    # decoded or trained
    assert "plan_ingest" not in output and "pretrain epoch" not in output, output


def test_a_closed_s3_endpoint_is_named_as_the_service_that_did_not_answer(closed_s3_endpoint):
    with pytest.raises(UnreachableService) as refused:
        check_services(["s3://scans/site-a"])
    assert f"the S3 endpoint {closed_s3_endpoint} did not answer" in str(refused.value) and "AWS_ENDPOINT_URL" in str(
        refused.value
    )
    assert "testing-secret" not in str(refused.value)


def test_every_silent_service_is_named_at_once(closed_s3_endpoint, monkeypatch):
    tracking = f"http://127.0.0.1:{free_port()}"
    with mlflow_at(monkeypatch, tracking):
        with pytest.raises(UnreachableService) as refused:
            check_services(["s3://scans/site-a", "fashion-mnist"])
    message = str(refused.value)
    assert (
        f"MLflow tracking server {tracking} did not answer" in message
        and f"S3 endpoint {closed_s3_endpoint}" in message
    )


def test_the_wait_for_an_answer_is_the_configured_timeout(silent_port, monkeypatch):
    monkeypatch.setenv("SSLFLOW_SERVICE_TIMEOUT_S", "0.5")
    with mlflow_at(monkeypatch, f"http://127.0.0.1:{silent_port}"):
        started = time.monotonic()
        with pytest.raises(UnreachableService, match=r"did not answer within 0.5 s"):
            check_services()
        assert time.monotonic() - started < 5  # MLflow's own retries: 7 tries of 120 s
    monkeypatch.setenv("SSLFLOW_SERVICE_TIMEOUT_S", "soon")
    with pytest.raises(Refusal, match=r"SSLFLOW_SERVICE_TIMEOUT_S='soon' is not a number of seconds"):
        check_services()


def test_an_s3_endpoint_that_stops_answering_during_ingest_is_a_recoverable_outage(closed_s3_endpoint):
    with pytest.raises(
        FlyteRecoverableException, match=rf"ObjectStoreUnavailable: .*S3 endpoint {closed_s3_endpoint} did not answer"
    ):
        plan_ingest.execute(
            source="s3://scans/site-a", fingerprint="", config=IngestConfig()
        )  # the task's body, as a pod runs it
    assert plan_ingest.metadata.retries >= 1


def test_a_tracking_server_that_stops_answering_during_a_run_is_a_recoverable_outage(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with mlflow_at(monkeypatch, f"http://127.0.0.1:{free_port()}"):
        with pytest.raises(
            FlyteRecoverableException,
            match=r"TrackingServerUnavailable: MLflow tracking server http://127.0.0.1:\d+ did not answer",
        ):
            start_data_run.execute(
                tracking_store="x",
                source="fashion-mnist",
                fingerprint="",
                config=IngestConfig(),
                validation=ValidationConfig(),
                label_fractions=[],
            )
    assert start_data_run.metadata.retries >= 1
