"""What every task shares: the typed artifacts between tasks, cache settings, MLflow's credentials, failures classified.

Artifacts carry a content sha256 that tasks declare as the output's cache hash
(``Annotated[..., HashMethod(content_hash)]``), so Flyte keys downstream caches on content, not on the
temporary path an artifact was written to. Their files are in the formats of sslflow (a dataset
folder: sslflow/data/dataset.py; checkpoints: torch state dicts read with ``weights_only=True``).

Every task module imports this one, the ingest pods' too: it imports neither torch nor the Elastic plugin
(flytekitplugins.kfpytorch), so a pod that lists or decodes files does not load them. What only training tasks
declare (GPU pods, Elastic workers, the GPU check) is in tasks/training_pods.py.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from flytekit import Cache, FlyteContextManager, Secret
from flytekit.deck import DeckField
from flytekit.exceptions.user import FlyteRecoverableException
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile

from ssl_models.cpu_threads import use_the_pods_cpus
from sslflow.data import shard_fetch
from sslflow.data.dataset import present_shards, read_images, read_summary
from sslflow.failures import infrastructure_failure

# The Decks of a task with a report (validate, self_train, evaluate) beside its own: flytekit's defaults but the
# "Dependencies" deck, which runs `pip list` and `pip freeze` in the pod at every execution (the image's packages are
# requirements.lock, not a per-run finding).
REPORT_DECKS = {
    "enable_deck": True,
    "deck_fields": (DeckField.SOURCE_CODE, DeckField.TIMELINE, DeckField.INPUT, DeckField.OUTPUT),
}

RETRIED = "retried: infrastructure failure of "  # how a recoverable failure's message starts (Flyte retries the task)


def outages_are_recoverable(task_function: Callable) -> Callable:
    """Under ``@task``: the task's failures classified (sslflow.failures). An infrastructure failure during the task
    (a service that stops answering, NCCL, CUDA) is raised as FlyteRecoverableException, so Flyte retries it (the
    task's ``retries``), its message starting RETRIED; anything else (a refusal of the input: sslflow.errors.Refusal,
    a bug) fails the task as the user's error, not retried. A task given GPUs also checks them first
    (tasks.training_pods.gpus_usable). PyTorch's threads are sized to the pod's CPU limit, not the node's cores
    (ssl_models.cpu_threads)."""

    @functools.wraps(task_function)
    def run(*args, **kwargs):
        use_the_pods_cpus()
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
