"""What training tasks declare: their GPU pods (image, resources per rank, accelerator), Elastic workers, the GPU check.

Training tasks (pretraining, fine-tuning, self-training) declare the GPU image and request, an accelerator and Elastic
(torchrun): locally one worker process; on a cluster ``SSLFLOW_NPROC_PER_NODE`` workers per pod (default 1; "auto":
one per GPU the pod can use), and a PyTorchJob of ``nnodes`` pods when nnodes > 1. ``Cache(serialize=True)`` on them:
a scheduled and a manual run with the same inputs wait for one another instead of both occupying GPUs.

This module imports torch and the Elastic plugin (flytekitplugins.kfpytorch); the CPU tasks' modules never import it
(tasks/shared.py is what every task shares), so an ingest pod does not load them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
from flytekit import Cache, Resources
from flytekit.core.task import TaskPlugins
from flytekit.exceptions.user import FlyteRecoverableException, FlyteUserRuntimeException
from flytekit.extras.accelerators import A100
from flytekitplugins.kfpytorch import Elastic
from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from images.specs import gpu_image
from ssl_models.device import check_gpus
from ssl_models.distributed import AUTO_WORKERS, workers_per_node
from sslflow.failures import killed_by_signal
from tasks.shared import MLFLOW_SECRETS, RETRIED, pipeline_cache

log = logging.getLogger(__name__)

# Workers per pod, read where the tasks are registered and sent into the pod in the task's environment (the pod imports
# this module again): SSLFLOW_NPROC_PER_NODE, an integer N (default 1: pods of N GPUs, N workers) or "auto" (one
# worker per GPU the pod can use, decided in the pod: ssl_models.distributed.workers_per_node), and with "auto"
# SSLFLOW_GPUS_PER_POD, the GPUs each pod requests (default 1). In the pod GPUS_PER_POD_VARIABLE is also the number
# of GPUs it checks it can use (gpus_usable).
NPROC_VARIABLE, GPUS_PER_POD_VARIABLE = "SSLFLOW_NPROC_PER_NODE", "SSLFLOW_GPUS_PER_POD"

# What one rank (one GPU) of a training pod gets; a pod of n ranks gets n times as much, as requests and limits.
# Shared memory (/dev/shm: NCCL, pinned batches) counts against the memory limit; ephemeral storage holds the
# shards a rank downloads to /tmp (tasks.shared.node_shards_folder) and its checkpoints.
CPU_PER_RANK, MEMORY_PER_RANK_GIB, SHARED_MEMORY_PER_RANK_GIB, DISK_PER_RANK_GIB = 8, 32, 4, 50
GPU_TASK_TIMEOUT = timedelta(hours=24)  # a hung rendezvous or collective ends the attempt (then Flyte's retries)


def gpus_usable(task_function: Callable) -> Callable:
    """Under ``@task`` (beside tasks.shared.outages_are_recoverable) of a task given GPUs: a pod given GPUs
    (GPUS_PER_POD_VARIABLE, set by the task's ``environment``: gpu_task_settings, FINETUNE_TASK_SETTINGS) that cannot
    use them fails at once (ssl_models.device.check_gpus: the driver and CUDA versions), not retried and never trained
    on the CPU instead; locally (no GPUs requested) the task runs where it is."""

    @functools.wraps(task_function)
    def run(*args, **kwargs):
        check_gpus(int(os.environ.get(GPUS_PER_POD_VARIABLE, "0")))
        return task_function(*args, **kwargs)

    return run


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
