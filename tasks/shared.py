"""What every task shares: the typed artifacts between tasks, cache and resource settings.

Artifacts carry a content sha256 that tasks declare as the output's cache hash
(``Annotated[..., HashMethod(content_hash)]``), so Flyte keys downstream caches on content, not on the
temporary path an artifact was written to. Their files are in the formats of sslflow (a dataset
folder: sslflow/data/dataset.py; checkpoints: torch state dicts read with ``weights_only=True``).

Training tasks declare the GPU image and request, an accelerator and Elastic (torchrun): locally one
worker process; on a cluster ``SSLFLOW_NPROC_PER_NODE`` workers per pod (default 1; "auto": one per
GPU the pod can use), and a PyTorchJob of ``nnodes`` pods when nnodes > 1. ``Cache(serialize=True)``
on them: a scheduled and a manual run with the same inputs wait for one another instead of both
occupying GPUs.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flytekit import Cache, FlyteContextManager, Resources, Secret
from flytekit.core.task import TaskPlugins
from flytekit.exceptions.user import FlyteRecoverableException, FlyteUserRuntimeException
from flytekit.extras.accelerators import A100
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from flytekitplugins.kfpytorch import Elastic
from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from images.specs import gpu_image
from ssl_models.cpu_threads import use_the_pods_cpus
from ssl_models.device import check_gpus
from ssl_models.distributed import AUTO_WORKERS, local_world_size, workers_per_node
from sslflow.data import shard_fetch
from sslflow.data.dataset import present_shards, read_images, read_summary
from sslflow.failures import infrastructure_failure, killed_by_signal

log = logging.getLogger(__name__)


def outages_are_recoverable(task_function: Callable) -> Callable:
    """Under ``@task``: the task's failures classified (sslflow.failures). A pod given GPUs (GPUS_PER_POD_VARIABLE, set
    by the GPU tasks' ``environment``) that cannot use them fails at once (ssl_models.device.check_gpus: the driver
    and CUDA versions), not retried and never trained on the CPU instead. PyTorch's threads are sized to the pod's CPU
    limit (ssl_models.cpu_threads), not the node's cores. An infrastructure failure during the task
    (a service that stops answering, NCCL, CUDA) is raised as FlyteRecoverableException, so Flyte retries it (the
    task's ``retries``), its message starting "retried: infrastructure failure"; anything else (a refusal of the
    input: sslflow.errors.Refusal, a bug) fails the task as the user's error, not retried."""

    @functools.wraps(task_function)
    def run(*args, **kwargs):
        check_gpus(int(os.environ.get(GPUS_PER_POD_VARIABLE, "0")))
        use_the_pods_cpus(local_world_size())
        try:
            return task_function(*args, **kwargs)
        except Exception as error:
            broken = infrastructure_failure(error)
            if broken is None:
                raise
            raise FlyteRecoverableException(f"{RETRIED}{broken}: {type(error).__name__}: {error}") from error

    return run


@dataclass
class Dataset:
    """An ingested image set: a dataset folder (manifest.parquet + shards.parquet + summary.json; the shard table
    points at the shards where the ingest chunks wrote them: sslflow/data/dataset.py)."""

    directory: FlyteDirectory
    name: str
    num_images: int
    content_sha256: str
    mlflow_run_id: str


@dataclass
class EncoderCheckpoint:
    """A pretrained encoder's state dict and what is needed to rebuild it."""

    checkpoint: FlyteFile
    encoder_name: str
    in_channels: int
    image_size: int
    content_sha256: str
    mlflow_run_id: str
    arm: str  # the method and ladder rung that made it (sslflow.ladder.arm): "simclr", "moco+domain", "byol+micle"
    # the user's weights the ladder started from (PretrainConfig.initial_weights) and their sha256; "" for random ones
    initial_weights: str = ""
    initial_weights_sha256: str = ""
    collapsed: str = (
        ""  # why the method's representation collapsed in its last epoch (DINO's monitor); "" when it did not
    )


@dataclass
class FinetunedModel:
    """A classifier (encoder + linear layer) trained on a fraction of the labels."""

    checkpoint: FlyteFile
    encoder_name: str
    in_channels: int
    image_size: int
    class_names: list[str]
    # where the weights came from: a floor ("pixels", "scratch"), a ladder arm ("simclr", "simclr+domain",
    # "simclr+micle"; "moco+micle" for MoCo v2: sslflow.ladder) or a student ("simclr+micle+student",
    # tasks/self_train.py)
    init: str
    probe: str  # "linear" (encoder frozen) or "finetune" (encoder trained too)
    label_fraction: float
    num_labels: int
    val_accuracy: float
    content_sha256: str
    mlflow_run_id: str
    seed: int = 0  # the fine-tuning seed: label subset, head initialisation, batch order, augmentation
    # False for a self-trained student that does not beat its teacher on validation: evaluated and
    # reported, never registered (sslflow.evaluation.select_best skips it).
    selectable: bool = True
    # the label budget's validation fold (sslflow.training.labelled_subset): num_labels + num_val_labels labels used
    num_val_labels: int = 0
    val_loss: float = 0.0  # cross-entropy on the validation fold: breaks ties of val_accuracy in every choice
    chosen: str = ""  # the settings the search chose on validation ("lr=0.001 wd=0.0001"; a probe's "C=0.1")
    best_step: int = 0  # the step whose weights were kept (0: a probe, no steps)
    final_train_accuracy: float = 0.0  # the returned model on its un-augmented training images
    initial_weights: str = (
        ""  # the user's weights its encoder's ladder started from, and their sha256 (EncoderCheckpoint)
    )
    initial_weights_sha256: str = ""


def content_hash(artifact) -> str:
    """HashMethod function for every artifact dataclass: its content sha256."""
    return artifact.content_sha256


def _in_blob_store(dataset: Dataset) -> str | None:
    """The Dataset's folder in a blob store (no trailing slash); None for a local one."""
    remote = dataset.directory.remote_source
    return remote.rstrip("/") if remote and _file_access().is_remote(remote) else None


def _file_access():
    return FlyteContextManager.current_context().file_access


def dataset_without_shards(dataset: Dataset) -> tuple[Path, Callable[[Path], None] | None]:
    """(folder, fetch) for reading a Dataset shard by shard. A local Dataset: its folder (the shard table points at
    local shard files), fetch None. A Dataset in a blob store (a task on a cluster): the manifest and summary, each
    shard fetched when read (sslflow.data.shard_fetch.dataset_without_shards)."""
    remote = _in_blob_store(dataset)
    if remote is None:
        return Path(dataset.directory.download()), None
    return shard_fetch.dataset_without_shards(remote, dataset.name, _file_access())


def node_shards_folder(dataset: Dataset) -> Path:
    """A folder for a Dataset's shards that every process of this node (pod) shares
    (sslflow.data.shard_fetch.node_shards_folder)."""
    return shard_fetch.node_shards_folder(dataset.content_sha256)


def dataset_rows(dataset: Dataset, rows: Callable[[pd.DataFrame], pd.Series]) -> tuple[Path, pd.DataFrame]:
    """(local folder, the manifest rows where ``rows(manifest)`` is True) with the shards of those rows, and only
    those, present in the folder: a task reads a few hundred labelled images without downloading the dataset."""
    return shard_fetch.rows_with_shards(*dataset_without_shards(dataset), rows)


def read_rows(dataset: Dataset, rows: Callable[[pd.DataFrame], pd.Series]) -> tuple[pd.DataFrame, np.ndarray]:
    """(manifest rows, their images (N, C, H, W) uint8) where ``rows(manifest)`` is True; only their shards are
    fetched."""
    folder, manifest = dataset_rows(dataset, rows)
    return manifest, read_images(folder, manifest, name=dataset.name)


def labelled_in(*splits: str) -> Callable[[pd.DataFrame], pd.Series]:
    """dataset_rows' selector of the labelled rows of ``splits``."""
    return lambda manifest: manifest["split"].isin(splits) & manifest["label"].notna()


def ingest_summary(dataset: Dataset) -> dict:
    """The ingest summary of a Dataset (sslflow.data.dataset.read_summary), without downloading its shards."""
    return read_summary(dataset_without_shards(dataset)[0])


def stored_shards(dataset: Dataset) -> set[str]:
    """The sha256s of the Dataset's shards whose files exist where its shard table says, listed without downloading
    them (sslflow.data.shard_fetch.stored_shards on a blob store)."""
    remote = _in_blob_store(dataset)
    if remote is None:
        return present_shards(Path(dataset.directory.download()))
    return shard_fetch.stored_shards(remote, _file_access())


def pipeline_cache(version: str, *, serialize: bool = False) -> Cache:
    """The cache of a stage task: keyed on everything but the MLflow parent run it logs under."""
    return Cache(version=version, ignored_inputs=("parent_run_id",), serialize=serialize)


# The MLflow tracking server's credentials, as Flyte Secrets mounted into MLflow's own variables: never in the execution
# spec, a task template or a log. Requested by every task that talks to MLflow where the tasks are registered with
# SSLFLOW_MLFLOW_AUTH=basic (Secret sslflow-mlflow, keys username and password) or token (key token); none by default
# (a server without authentication): a Secret that does not exist would keep every pod from starting.
MLFLOW_AUTH = os.environ.get("SSLFLOW_MLFLOW_AUTH", "")
MLFLOW_SECRETS = {
    "basic": [
        Secret(
            group="sslflow-mlflow",
            key="username",
            env_var="MLFLOW_TRACKING_USERNAME",
            mount_requirement=Secret.MountType.ENV_VAR,
        ),
        Secret(
            group="sslflow-mlflow",
            key="password",
            env_var="MLFLOW_TRACKING_PASSWORD",
            mount_requirement=Secret.MountType.ENV_VAR,
        ),
    ],
    "token": [
        Secret(
            group="sslflow-mlflow",
            key="token",
            env_var="MLFLOW_TRACKING_TOKEN",
            mount_requirement=Secret.MountType.ENV_VAR,
        )
    ],
    "": [],
}.get(MLFLOW_AUTH)
if MLFLOW_SECRETS is None:
    raise ValueError(
        f"SSLFLOW_MLFLOW_AUTH={MLFLOW_AUTH!r}: set it to basic, token or nothing (a tracking server without "
        "authentication)"
    )

# Workers per pod, read where the tasks are registered and sent into the pod in the task's environment (the pod imports
# this module again): SSLFLOW_NPROC_PER_NODE, an integer N (default 1: pods of N GPUs, N workers) or "auto" (one
# worker per GPU the pod can use, decided in the pod: ssl_models.distributed.workers_per_node), and with "auto"
# SSLFLOW_GPUS_PER_POD, the GPUs each pod requests (default 1). In the pod GPUS_PER_POD_VARIABLE is also the number
# of GPUs it checks it can use (outages_are_recoverable).
NPROC_VARIABLE, GPUS_PER_POD_VARIABLE = "SSLFLOW_NPROC_PER_NODE", "SSLFLOW_GPUS_PER_POD"
RETRIED = "retried: infrastructure failure of "  # how a recoverable failure's message starts (Flyte retries the task)

# What one rank (one GPU) of a training pod gets; a pod of n ranks gets n times as much, as requests and limits.
# Shared memory (/dev/shm: NCCL, pinned batches) counts against the memory limit; ephemeral storage holds the
# shards a rank downloads to /tmp (tasks.shared.node_shards_folder) and its checkpoints.
CPU_PER_RANK, MEMORY_PER_RANK_GIB, SHARED_MEMORY_PER_RANK_GIB, DISK_PER_RANK_GIB = 8, 32, 4, 50
GPU_TASK_TIMEOUT = timedelta(hours=24)  # a hung rendezvous or collective ends the attempt (then Flyte's retries)


@dataclass(frozen=True)
class PodWorkers:
    """A training pod as registered: ``gpus`` GPUs requested and ``workers`` Elastic worker processes, an integer or
    "auto" (AUTO_WORKERS: one per GPU the pod can use, counted in the pod when the task starts)."""

    workers: int | str
    gpus: int

    @property
    def ranks(self) -> int:
        """The workers the pod runs when it can use the GPUs it requested (one without GPUs): what its CPU, memory,
        shared memory and disk are for and what its cache key counts (workers_per_node, as in the pod)."""
        return workers_per_node(self.workers, self.gpus)

    @classmethod
    def registered(cls, environment: Mapping[str, str]) -> PodWorkers:
        """The pods ``environment`` registers (NPROC_VARIABLE, GPUS_PER_POD_VARIABLE); ValueError naming the variable
        for a value that is neither, or for integer workers on another number of GPUs (one worker per GPU)."""
        setting = environment.get(NPROC_VARIABLE, "1").strip()
        workers = setting if setting == AUTO_WORKERS else int(setting) if setting.isdigit() else None
        gpus = environment.get(GPUS_PER_POD_VARIABLE, str(workers if isinstance(workers, int) else 1)).strip()
        if workers is None or workers == 0 or not gpus.isdigit():
            raise ValueError(
                f"{NPROC_VARIABLE}={setting!r}, {GPUS_PER_POD_VARIABLE}={gpus!r}: set {NPROC_VARIABLE} to the workers "
                f"per pod (an integer >= 1, the pod's GPUs, or {AUTO_WORKERS}: one per GPU the pod can use) and, with "
                f"{AUTO_WORKERS}, {GPUS_PER_POD_VARIABLE} to the GPUs each pod requests"
            )
        if isinstance(workers, int) and int(gpus) not in (0, workers):
            raise ValueError(
                f"{NPROC_VARIABLE}={workers} workers on pods of {GPUS_PER_POD_VARIABLE}={gpus} GPUs: one worker per "
                f"GPU; set only {NPROC_VARIABLE}, or {NPROC_VARIABLE}={AUTO_WORKERS} with {GPUS_PER_POD_VARIABLE}"
            )
        return cls(workers, int(gpus))


POD_WORKERS = PodWorkers.registered(os.environ)


class ElasticWorkers(Elastic):
    """flytekitplugins.kfpytorch's Elastic config, run by ElasticWorkersTask: nproc_per_node may be "auto" (counted in
    the pod; a worker killed by a signal is retried)."""


class ElasticWorkersTask(PytorchElasticFunctionTask):
    """The Elastic plugin's task (torchrun in the pod), but its workers counted in the pod when nproc_per_node is "auto"
    (torchrun's --nproc-per-node auto: the plugin takes an integer), and a worker process killed by a signal (the
    node's OOM killer, a preemption) failing the attempt as recoverable, so Flyte retries it; the plugin reports it as
    the user's error."""

    def execute(self, **kwargs):
        registered = self.task_config
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        workers = workers_per_node(registered.nproc_per_node, cuda_devices)
        log.info(
            "%d Elastic worker(s) in this pod (nproc_per_node=%s, %d GPU(s))",
            workers,
            registered.nproc_per_node,
            cuda_devices,
        )
        self._task_config = replace(registered, nproc_per_node=workers)
        try:
            return self._launch(**kwargs)
        finally:
            self._task_config = registered

    def _launch(self, **kwargs):
        try:
            return super().execute(**kwargs)
        except FlyteUserRuntimeException as error:
            if isinstance(error.value, ChildFailedError):
                rank, failure = error.value.get_first_failure()
                signal_name = killed_by_signal(failure.exitcode)
                if signal_name is not None:
                    raise FlyteRecoverableException(
                        f"{RETRIED}a worker process: rank {rank} was killed by {signal_name} (the node's OOM killer "
                        "or a preemption); if every attempt is, give the pod more memory or lower "
                        "PretrainConfig.batch_size"
                    ) from error
            raise


TaskPlugins.register_pythontask_plugin(ElasticWorkers, ElasticWorkersTask)


def rank_resources(pod: PodWorkers) -> Resources:
    """The requests (and limits) of a training pod: its GPUs, and per rank (PodWorkers.ranks) CPU_PER_RANK cores,
    MEMORY_PER_RANK_GIB GiB and DISK_PER_RANK_GIB GiB of ephemeral storage."""
    memory, disk = f"{MEMORY_PER_RANK_GIB * pod.ranks}Gi", f"{DISK_PER_RANK_GIB * pod.ranks}Gi"
    return Resources(cpu=str(CPU_PER_RANK * pod.ranks), mem=memory, gpu=str(pod.gpus), ephemeral_storage=disk)


def gpu_task_settings(pod: PodWorkers, *, nnodes: int = 1) -> dict:
    """The @task settings of a training task of ``nnodes`` pods like ``pod``: the GPU image, resources that follow the
    ranks (rank_resources; shared memory too), the A100 accelerator, the workers and GPUs per pod in the pod's
    environment, MLflow's credentials (MLFLOW_SECRETS), retries on preemptible (``interruptible``) nodes and a timeout.
    monitor_interval: the launcher polls its workers every second (the default 5 s adds up to 5 s to every task).
    Shared memory comes from the task's shared_memory, not Elastic's deprecated increase_shared_mem. "auto" workers
    need one pod (a PyTorchJob's Elastic config takes an integer)."""
    if nnodes > 1 and pod.workers == AUTO_WORKERS:
        raise ValueError(f"{NPROC_VARIABLE}={AUTO_WORKERS} runs on one pod; give the workers of {nnodes} pods")
    elastic = ElasticWorkers(nnodes=nnodes, nproc_per_node=pod.workers, monitor_interval=1, increase_shared_mem=False)
    return dict(
        container_image=gpu_image,
        requests=rank_resources(pod),
        limits=rank_resources(pod),
        accelerator=A100,
        shared_memory=f"{SHARED_MEMORY_PER_RANK_GIB * pod.ranks}Gi",
        environment={NPROC_VARIABLE: str(pod.workers), GPUS_PER_POD_VARIABLE: str(pod.gpus)},
        task_config=elastic,
        secret_requests=MLFLOW_SECRETS,
        retries=2,
        interruptible=True,
        timeout=GPU_TASK_TIMEOUT,
    )


def pretraining_cache(version: str, *, pod: PodWorkers = POD_WORKERS, nnodes: int = 1) -> Cache:
    """The cache of a pretraining task on ``nnodes`` pods like ``pod``: the world size (PodWorkers.ranks x nnodes) is
    part of the cache version, because the global batch (PretrainConfig.batch_size per rank) and the steps per epoch
    follow it; the same inputs on another number of workers train another model. Serialized: a scheduled and a manual
    run with the same inputs wait for one another instead of both occupying GPUs."""
    return pipeline_cache(f"{version}-world{pod.ranks * nnodes}", serialize=True)


GPU_TASK_SETTINGS = gpu_task_settings(POD_WORKERS)

# Fine-tuning on a few hundred labels gains nothing from data parallelism: one process on one GPU, no Elastic.
# An Elastic task with one worker still spawns a worker process per call, which re-imports torch,
# torchvision, mlflow and the task module and rendezvouses (torch's rendezvous events walk
# inspect.stack()): ~20 s per call locally under load, for each of finetune_all's 27 tasks.
FINETUNE_TASK_SETTINGS = {
    **{key: value for key, value in gpu_task_settings(PodWorkers(1, 1)).items() if key != "task_config"},
    "environment": {GPUS_PER_POD_VARIABLE: "1"},
}
