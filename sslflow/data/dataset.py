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
    interrupted write leaves no half-written dataset. A previous dataset at ``directory`` is replaced
    by ``_swap_in``: it is removed only once the new one is in place.
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
        _swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sha256


def _swap_in(staging: Path, directory: Path) -> None:
    """Rename ``staging`` to ``directory``; an existing ``directory`` is moved aside first and removed only
    after the rename, or moved back if it fails. At no moment is ``directory`` a half-written dataset."""
    if not directory.exists():
        staging.rename(directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
    old.rmdir()  # a unique free name for the rename below
    directory.rename(old)
    try:
        staging.rename(directory)
    except BaseException:
        old.rename(directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
