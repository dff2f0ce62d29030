"""What every task shares: the typed artifacts between tasks, cache and resource settings.

Artifacts carry a content sha256 that tasks declare as the output's cache hash
(``Annotated[..., HashMethod(content_hash)]``), so Flyte keys downstream caches on content, not on the
temporary path an artifact was written to. Their files are in the formats of sslflow (a dataset
folder: sslflow/data/dataset.py; checkpoints: torch state dicts read with ``weights_only=True``).

Training tasks declare the GPU image and request, an accelerator and Elastic (torchrun): locally one
worker process; on a cluster ``SSLFLOW_NPROC_PER_NODE`` workers per pod (default 1), and a
PyTorchJob of ``nnodes`` pods when nnodes > 1. ``Cache(serialize=True)`` on them: a scheduled and a
manual run with the same inputs wait for one another instead of both occupying GPUs.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from flytekit import Cache, FlyteContextManager, Resources
from flytekit.exceptions.user import FlyteRecoverableException
from flytekit.extras.accelerators import A100
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from flytekitplugins.kfpytorch import Elastic

from images.specs import gpu_image
from ssl_models.shards import SHARD_SUFFIX, ShardError
from sslflow.data.dataset import (
    MANIFEST_FILE, SHARD_TABLE, SHARDS_FOLDER, SUMMARY_FILE, fetch_shards, is_remote, present_shards, read_images, read_manifest, read_summary,
    shard_locations,
)  # fmt: skip
from sslflow.errors import ServiceUnavailable


def outages_are_recoverable(task_function: Callable) -> Callable:
    """Under ``@task``: a service that stops answering during the task (sslflow.errors.ServiceUnavailable: tracking
    server, S3 endpoint, archive) fails it with FlyteRecoverableException, so Flyte retries it (the task's
    ``retries``) as an outage instead of failing the run as if the input were bad."""

    @functools.wraps(task_function)
    def run(*args, **kwargs):
        try:
            return task_function(*args, **kwargs)
        except ServiceUnavailable as outage:
            raise FlyteRecoverableException(f"{type(outage).__name__}: {outage}") from outage

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
    collapsed: str = ""  # why the method's representation collapsed in its last epoch (DINO's monitor); "" when it did not


@dataclass
class FinetunedModel:
    """A classifier (encoder + linear layer) trained on a fraction of the labels."""

    checkpoint: FlyteFile
    encoder_name: str
    in_channels: int
    image_size: int
    class_names: list[str]
    # where the weights came from: a floor ("pixels", "scratch"), a ladder arm ("simclr", "simclr+domain",
    # "simclr+micle"; "moco+micle" for MoCo v2: sslflow.ladder) or a student ("simclr+micle+student", tasks/self_train.py)
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
    initial_weights: str = ""  # the user's weights its encoder's ladder started from, and their sha256 (EncoderCheckpoint)
    initial_weights_sha256: str = ""


def content_hash(artifact) -> str:
    """HashMethod function for every artifact dataclass: its content sha256."""
    return artifact.content_sha256


def _in_blob_store(dataset: Dataset) -> str | None:
    """The Dataset's folder in a blob store (no trailing slash); None for a local one."""
    remote = dataset.directory.remote_source
    return remote.rstrip("/") if remote and FlyteContextManager.current_context().file_access.is_remote(remote) else None


def dataset_without_shards(dataset: Dataset) -> tuple[Path, Callable[[Path], None] | None]:
    """(folder, fetch) for reading a Dataset shard by shard. A local Dataset: its folder (the shard table points at
    local shard files), fetch None. A Dataset in a blob store (a task on a cluster): a local folder with only the
    manifest and summary downloaded; fetch(path) downloads the shard named like ``path`` from its location (the
    Dataset's shard table) to ``path`` (sslflow.data.dataset.fetch_shards, ShardRows), so a task downloads only the shards it
    reads. A shard whose location is gone is a ShardError naming it."""
    remote, file_access = _in_blob_store(dataset), FlyteContextManager.current_context().file_access
    if remote is None:
        return Path(dataset.directory.download()), None
    folder = Path(file_access.get_random_local_directory())
    file_access.get_data(f"{remote}/{MANIFEST_FILE}", str(folder / MANIFEST_FILE))
    if file_access.exists(f"{remote}/{SUMMARY_FILE}"):
        file_access.get_data(f"{remote}/{SUMMARY_FILE}", str(folder / SUMMARY_FILE))
    (folder / SHARDS_FOLDER).mkdir()  # the folder has no shard table: its shards are fetched into shards/
    locations = _remote_locations(remote)

    def fetch(path: Path) -> None:  # under a temporary name first: a shard file under its own name is whole
        location = locations.get(path.name.removesuffix(SHARD_SUFFIX), f"{remote}/{SHARDS_FOLDER}/{path.name}")
        partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
        try:
            file_access.get_data(location, str(partial))
        except Exception as error:
            if file_access.exists(location):
                raise
            raise ShardError(
                f"shard {path.name.removesuffix(SHARD_SUFFIX)} of dataset {dataset.name} is missing at {location} (the ingest chunk "
                "output it references was deleted); ingest the source again"
            ) from error
        os.replace(partial, path)

    return folder, fetch


def _remote_locations(remote: str) -> dict[str, str]:
    """shard sha256 -> URI of the Dataset at ``remote`` from its shard table ({} for a Dataset without one: its shards
    are in shards/); a relative location is inside the Dataset's folder."""
    file_access = FlyteContextManager.current_context().file_access
    if not file_access.exists(f"{remote}/{SHARD_TABLE}"):
        return {}
    folder = Path(file_access.get_random_local_directory())
    file_access.get_data(f"{remote}/{SHARD_TABLE}", str(folder / SHARD_TABLE))
    return {shard: location if is_remote(location) else f"{remote}/{location}" for shard, location in shard_locations(folder).items()}


def node_shards_folder(dataset: Dataset) -> Path:
    """A folder for a Dataset's shards that every process of this node (pod) shares: the ranks of one training
    pod download each shard once into it (sslflow.data.dataset.fetch_shards_once_per_node)."""
    return Path(tempfile.gettempdir()) / "sslflow-node-shards" / dataset.content_sha256


def dataset_rows(dataset: Dataset, rows: Callable[[pd.DataFrame], pd.Series]) -> tuple[Path, pd.DataFrame]:
    """(local folder, the manifest rows where ``rows(manifest)`` is True) with the shards of those rows, and only
    those, present in the folder: a task reads a few hundred labelled images without downloading the dataset."""
    folder, fetch = dataset_without_shards(dataset)
    manifest = read_manifest(folder)
    manifest = manifest[rows(manifest).to_numpy(dtype=bool)].reset_index(drop=True)
    if fetch is not None:
        fetch_shards(folder, manifest, fetch)
    return folder, manifest


def read_rows(dataset: Dataset, rows: Callable[[pd.DataFrame], pd.Series]) -> tuple[pd.DataFrame, np.ndarray]:
    """(manifest rows, their images (N, C, H, W) uint8) where ``rows(manifest)`` is True; only their shards are fetched."""
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
    them (one listing per folder of shards, i.e. per chunk, on a blob store)."""
    remote, file_access = _in_blob_store(dataset), FlyteContextManager.current_context().file_access
    if remote is None:
        return present_shards(Path(dataset.directory.download()))
    folders = {location.rsplit("/", 1)[0] for location in _remote_locations(remote).values()} or {f"{remote}/{SHARDS_FOLDER}"}
    names = [name for shards in sorted(folders) if file_access.exists(shards) for name in file_access.get_filesystem_for_path(shards).ls(shards, detail=False)]
    return {name.rstrip("/").rsplit("/", 1)[-1].removesuffix(SHARD_SUFFIX) for name in names if name.endswith(SHARD_SUFFIX)}


def pipeline_cache(version: str, *, serialize: bool = False) -> Cache:
    """The cache of a stage task: keyed on everything but the MLflow parent run it logs under."""
    return Cache(version=version, ignored_inputs=("parent_run_id",), serialize=serialize)


NPROC_PER_NODE = int(os.environ.get("SSLFLOW_NPROC_PER_NODE", "1"))  # one GPU per worker

# monitor_interval: the launcher polls its workers this often (seconds); the default 5 s adds up to
# 5 s to every task, which dominates short local runs. Shared memory (for NCCL and pinned batches)
# comes from the task's shared_memory, not Elastic's deprecated increase_shared_mem.
GPU_TASK_SETTINGS = dict(
    container_image=gpu_image,
    requests=Resources(cpu="8", mem="32Gi", gpu=str(NPROC_PER_NODE)),
    limits=Resources(gpu=str(NPROC_PER_NODE)),
    accelerator=A100,
    shared_memory=True,
    task_config=Elastic(nnodes=1, nproc_per_node=NPROC_PER_NODE, monitor_interval=1, increase_shared_mem=False),
    retries=2,  # preemptible GPU nodes
)

# Fine-tuning on a few hundred labels gains nothing from data parallelism: one process, no Elastic.
# An Elastic task with one worker still spawns a worker process per call, which re-imports torch,
# torchvision, mlflow and the task module and rendezvouses (torch's rendezvous events walk
# inspect.stack()): ~20 s per call locally under load, for each of finetune_all's 27 tasks.
FINETUNE_TASK_SETTINGS = {
    **{key: value for key, value in GPU_TASK_SETTINGS.items() if key != "task_config"},
    "requests": Resources(cpu="8", mem="32Gi", gpu="1"),
    "limits": Resources(gpu="1"),
}
