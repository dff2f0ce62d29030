"""The dataset folder format: ``manifest.parquet`` + ``images.npy`` + ``summary.json``.

``images.npy`` is (N, C, H, W) uint8 and row i of it is manifest row i (sslflow/data/manifest.py);
``summary.json`` is what ingest saw (duplicates, quarantined files, read statistics). The content
sha256 of a dataset is that of its manifest and image bytes. Functions here take local folders;
the Flyte artifact that carries one between tasks is tasks.shared.Dataset.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sslflow.data.manifest import MANIFEST_COLUMNS
from sslflow.files import file_sha256

MANIFEST_FILE = "manifest.parquet"
IMAGES_FILE = "images.npy"
SUMMARY_FILE = "summary.json"


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


def read_dataset(directory: Path, name: str = "") -> tuple[pd.DataFrame, np.ndarray]:
    """(manifest, images (N, C, H, W) uint8) of the dataset folder ``directory``; ``name`` for messages."""
    manifest = pd.read_parquet(directory / MANIFEST_FILE)
    images = np.load(directory / IMAGES_FILE, allow_pickle=False)
    if len(manifest) != images.shape[0]:
        raise ValueError(f"dataset {name or directory}: {MANIFEST_FILE} has {len(manifest)} rows, {IMAGES_FILE} {images.shape[0]} images")
    return manifest, images


def read_summary(directory: Path) -> dict:
    """The ingest summary of a dataset folder ({} for datasets written without one)."""
    path = directory / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
