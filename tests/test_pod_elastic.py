"""The pretraining task's Elastic launch as its pod runs it (tests/pod_harness.py: the serialized command, only the
pod's environment, inputs and outputs in a moto S3 server): the workers counted in the pod, and what Flyte reads from
the pod when a worker fails under the real launcher (torch.distributed.elastic, started by flytekitplugins-kfpytorch).

The tasks are registered with SSLFLOW_NPROC_PER_NODE=auto and SSLFLOW_GPUS_PER_POD=GPUS: the template requests GPUS GPUs
and resources for GPUS ranks, and the pod starts one worker per GPU it can use (one on this machine's CPU pods).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from moto_s3 import moto_s3_server, s3_environment
from PIL import Image
from pod_harness import PodFailed, PodRunner, literals, python_value, serialized_package

from ssl_models.augment import AugmentConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig

# registered GPUs per pod: this machine's GPUs, or 2 without (more than the one worker of a CPU pod)
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 2
PRETRAIN = "tasks.pretrain.pretrain_generic"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """tasks.pretrain serialized as `pyflyte package` does where SSLFLOW_NPROC_PER_NODE=auto is set."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SSLFLOW_NPROC_PER_NODE", "auto")
        monkeypatch.setenv("SSLFLOW_GPUS_PER_POD", str(GPUS))
        return serialized_package(tmp_path_factory.mktemp("package"), "tasks.pretrain").tasks


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    """(a PodRunner against a moto S3 server, the inputs of pretrain_generic on a small PNG Dataset in that store, the
    MLflow store the pods log to)."""
    from sslflow.data.chunks import ingest_source
    from sslflow.tracking.runs import start_parent_run
    from tasks.pretrain import pretrain_generic
    from tasks.shared import Dataset

    work = tmp_path_factory.mktemp("pods")
    scans = work / "scans"
    scans.mkdir()
    for index in range(24):
        pixels = np.random.default_rng(index).integers(0, 256, (12, 12), dtype=np.uint8)
        Image.fromarray(pixels).save(scans / f"img{index:03d}.png")
    sha256, manifest, _ = ingest_source(str(scans), IngestConfig(image_size=16), work / "dataset")
    mlflow_uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as monkeypatch, moto_s3_server(work) as endpoint:
        s3_environment(monkeypatch, endpoint)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        registered_environment = {  # what `pyflyte register --env` gives every pod (README: run on your cluster)
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        runner = PodRunner(work, endpoint, registered=registered_environment)
        for path in sorted((work / "dataset").rglob("*")):
            if path.is_file():
                runner.s3.upload_file(str(path), "flyte", f"datasets/pngs/{path.relative_to(work / 'dataset')}")
        from flytekit.types.directory import FlyteDirectory

        dataset = Dataset(FlyteDirectory("s3://flyte/datasets/pngs"), "pngs", len(manifest), sha256, "")

        def inputs(**config):
            settings = PretrainConfig(epochs=1, batch_size=8, augment=AugmentConfig(output_size=16), **config)
            run_id = start_parent_run("pod-elastic", {})
            return literals(
                pretrain_generic, dataset=dataset, encoder_name="small_cnn", config=settings, parent_run_id=run_id
            )

        yield runner, inputs, mlflow_uri


def test_auto_workers_are_counted_in_the_pod(registered, pods):
    """Registered with auto: the pod requests GPUS GPUs and GPUS ranks' CPU and memory; it runs one worker per GPU it
    can use: one on a CPU pod (the harness tells a GPU task's pod it has none here), all of them on a GPU node."""
    from mlflow.tracking import MlflowClient

    from tasks.shared import EncoderCheckpoint

    runner, inputs, mlflow_uri = pods
    task = registered[PRETRAIN]
    assert task.env == {"SSLFLOW_NPROC_PER_NODE": "auto", "SSLFLOW_GPUS_PER_POD": str(GPUS)}
    outputs = runner.run(task, "pretrain-auto", inputs())
    encoder = python_value(outputs.literals["o0"], EncoderCheckpoint)
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("sslflow").experiment_id], f"attributes.run_id = '{encoder.mlflow_run_id}'"
    )
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert run.data.params["world_size"] == str(max(usable, 1)), run.data.params


def _kill_workers_of(pod: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL (as the node's OOM killer sends it) every Elastic worker process of the pod whose folder is ``pod``: the
    processes that multiprocessing spawned in the pod's working directory."""
    while not stop.is_set():
        for pid, command in _processes_in(pod / "cwd").items():
            if "spawn_main" in command and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)


def _processes_in(folder: Path) -> dict[int, str]:
    """pid -> command line of this machine's processes whose working directory is ``folder`` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == folder:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                continue
    return found


def test_a_killed_worker_is_retried_a_refused_input_is_not(registered, pods):
    """A worker process killed by SIGKILL under the real launcher: the pod's error is RECOVERABLE (Flyte retries it),
    its message saying so. A worker that refuses its input (initial weights that are not in the bucket: a SourceError
    from S3's 404) fails NON_RECOVERABLE, naming the input."""
    runner, inputs, _ = pods
    task = registered[PRETRAIN]
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_workers_of, args=(runner.work / "pods" / "pretrain-killed", killed, stop))
    killer.start()
    try:
        with pytest.raises(PodFailed) as crashed:
            runner.run(task, "pretrain-killed", inputs())
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker process was seen to kill"
    assert crashed.value.recoverable and crashed.value.origin == "USER", crashed.value
    assert "retried: infrastructure failure of a worker process: rank 0 was killed by SIGKILL" in crashed.value.message

    with pytest.raises(PodFailed) as refused:
        runner.run(task, "pretrain-refused", inputs(initial_weights="s3://flyte/no-such-weights.pt"))
    assert not refused.value.recoverable and refused.value.origin == "USER", refused.value
    assert "s3://flyte/no-such-weights.pt" in refused.value.message and "SourceError" in refused.value.message


def test_workers_per_pod_settings():
    """What a pod starts for each setting, and the pods each registration describes."""
    from ssl_models.distributed import workers_per_node
    from tasks.training_pods import PodWorkers, gpu_task_settings

    assert [workers_per_node("auto", gpus) for gpus in (0, 1, 8)] == [1, 1, 8]
    assert workers_per_node(2, 0) == 2 and workers_per_node(4, 4) == 4
    with pytest.raises(ValueError, match="give an integer >= 1 or 'auto'"):
        workers_per_node("gpu", 2)
    auto = PodWorkers.registered({"SSLFLOW_NPROC_PER_NODE": "auto", "SSLFLOW_GPUS_PER_POD": "8"})
    assert (auto.workers, auto.gpus, auto.ranks) == ("auto", 8, 8)
    requests = gpu_task_settings(auto)["requests"]
    assert (requests.gpu, requests.cpu, requests.mem, requests.ephemeral_storage) == ("8", "64", "256Gi", "400Gi")
    with pytest.raises(ValueError, match="runs on one pod"):
        gpu_task_settings(auto, nnodes=2)  # a PyTorchJob's Elastic config takes an integer
    assert PodWorkers.registered({"SSLFLOW_NPROC_PER_NODE": "auto"}).ranks == 1
    assert PodWorkers.registered({"SSLFLOW_NPROC_PER_NODE": "4"}) == PodWorkers(4, 4)
    assert PodWorkers.registered({}) == PodWorkers(1, 1)
    for wrong in ({"SSLFLOW_NPROC_PER_NODE": "0"}, {"SSLFLOW_NPROC_PER_NODE": "all"}):
        with pytest.raises(ValueError, match="set SSLFLOW_NPROC_PER_NODE to the workers per pod"):
            PodWorkers.registered(wrong)
    with pytest.raises(ValueError, match="one worker per GPU"):
        PodWorkers.registered({"SSLFLOW_NPROC_PER_NODE": "3", "SSLFLOW_GPUS_PER_POD": "4"})
