"""Typed artifacts that flow between tasks, and their on-disk formats.

A dataset is a folder with ``manifest.parquet`` (one row per image) and ``images.npy``
((N, C, H, W) uint8, row i of the array is manifest row i). Checkpoints are torch state dicts
read back with ``weights_only=True``. Every artifact carries a content sha256; tasks declare
their outputs ``Annotated[..., HashMethod(content_hash)]`` so Flyte's cache keys downstream
tasks on content, not on the temporary path an artifact was written to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile

from tasks.manifest import MANIFEST_COLUMNS  # noqa: F401  (re-exported: the manifest schema)

MANIFEST_FILE = "manifest.parquet"
IMAGES_FILE = "images.npy"
SUMMARY_FILE = "summary.json"  # what ingest saw: duplicates, quarantined files, read statistics


@dataclass
class Dataset:
    """An ingested image set: a folder of manifest.parquet + images.npy."""

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


@dataclass
class FinetunedModel:
    """A classifier (encoder + linear layer) trained on a fraction of the labels."""

    checkpoint: FlyteFile
    encoder_name: str
    in_channels: int
    image_size: int
    class_names: list[str]
    init: str  # where the encoder weights came from: "scratch", "simclr" or "simclr+micle"
    probe: str  # "linear" (encoder frozen) or "finetune" (encoder trained too)
    label_fraction: float
    num_labels: int
    val_accuracy: float
    content_sha256: str
    mlflow_run_id: str


def content_hash(artifact) -> str:
    """HashMethod function for every artifact dataclass: its content sha256."""
    return artifact.content_sha256


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_dataset(directory: Path, manifest: pd.DataFrame, images: np.ndarray, summary: dict) -> str:
    """Write the dataset files into ``directory`` and return their content sha256.

    The files are written to a temporary folder beside ``directory`` and renamed into place, so an
    interrupted write leaves no half-written dataset (a previous one at ``directory`` is replaced).
    """
    if len(manifest) != images.shape[0]:
        raise ValueError(f"manifest has {len(manifest)} rows but there are {images.shape[0]} images")
    if tuple(manifest.columns) != MANIFEST_COLUMNS:
        raise ValueError(f"manifest columns {list(manifest.columns)} differ from MANIFEST_COLUMNS {list(MANIFEST_COLUMNS)}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        manifest.reset_index(drop=True).to_parquet(staging / MANIFEST_FILE, index=False)
        np.save(staging / IMAGES_FILE, np.ascontiguousarray(images), allow_pickle=False)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        sha256 = file_sha256(staging / MANIFEST_FILE, staging / IMAGES_FILE)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sha256


def read_dataset(dataset: Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """(manifest, images (N, C, H, W) uint8) of a Dataset, downloading it if remote."""
    local = Path(dataset.directory.download())
    manifest = pd.read_parquet(local / MANIFEST_FILE)
    images = np.load(local / IMAGES_FILE, allow_pickle=False)
    if len(manifest) != images.shape[0]:
        raise ValueError(f"dataset {dataset.name}: {MANIFEST_FILE} has {len(manifest)} rows, {IMAGES_FILE} {images.shape[0]} images")
    return manifest, images


def read_summary(dataset: Dataset) -> dict:
    """The ingest summary of a Dataset ({} for datasets written without one)."""
    path = Path(dataset.directory.download()) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
