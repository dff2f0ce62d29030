"""The dataset manifest: the table ingest writes, one row per image with its content hash, source, case,
site, label and split (the parquet *input* a user may hand in is an image list: sslflow/data/parquet_list.py).

Pure pandas/numpy (no Flyte): benchmarks/quality.py builds the same manifests on a GPU box.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ssl_models.proxy_cases import pixel_neighbour_proxy_cases
from sslflow.config import IngestConfig
from sslflow.data.types import SourceError, SourceImages

MANIFEST_COLUMNS = (
    "sha256", "source_path", "size_bytes", "width", "height", "mode",
    "case_id", "case_id_is_proxy", "site", "modality", "label", "split",
)  # fmt: skip
MAX_LISTED_CONFLICTS = 20


def split_of_case(case_id: str, seed: int, train_fraction: float, val_fraction: float) -> str:
    """Deterministic split of a whole case: a hash of (seed, case_id) mapped to [0, 1)."""
    position = int(hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()[:12], 16) / float(16**12)
    if position < train_fraction:
        return "train"
    return "val" if position < train_fraction + val_fraction else "test"


def deduplicate(hashes: list[str], images: SourceImages) -> tuple[np.ndarray, list[str]]:
    """One row per distinct image (``hashes``: sha256 of each image's decoded pixels).

    Returns (indices kept, ascending; source paths of the dropped copies). Of identical images the first
    labelled one is kept, else the first: an unlabelled copy never hides a label. Raises SourceError
    naming the files and their labels when identical images have different labels.
    """
    rows_of_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        rows_of_hash.setdefault(digest, []).append(index)
    keep, conflicts = [], []
    for rows in rows_of_hash.values():
        labelled = [row for row in rows if images.labels[row] is not None]
        keep.append(labelled[0] if labelled else rows[0])
        conflicts += [
            f"{images.source_paths[labelled[0]]} (label {images.labels[labelled[0]]!r}) and "
            f"{images.source_paths[row]} (label {images.labels[row]!r})"
            for row in labelled[1:]
            if images.labels[row] != images.labels[labelled[0]]
        ]
    if conflicts:
        more = f"\n  ... and {len(conflicts) - MAX_LISTED_CONFLICTS} more" if len(conflicts) > MAX_LISTED_CONFLICTS else ""
        raise SourceError(
            f"{len(conflicts)} pair(s) of identical images (same decoded pixels) have different labels; only one copy "
            "is kept, so one label would be dropped silently. Correct the label or remove the copy:\n  "
            + "\n  ".join(conflicts[:MAX_LISTED_CONFLICTS]) + more
        )
    kept = set(keep)
    return np.array(sorted(kept), dtype=np.int64), [images.source_paths[i] for i in range(len(hashes)) if i not in kept]


def build_manifest(images: SourceImages, config: IngestConfig) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Deduplicate, subsample, assign cases and splits. Returns (manifest, pixels (N, C, H, W), summary).

    Raises SourceError when identical images have different labels (deduplicate).
    """
    hashes = [hashlib.sha256(pixels.tobytes()).hexdigest() for pixels in images.pixels]
    keep, duplicates = deduplicate(hashes, images)
    if config.max_images and len(keep) > config.max_images:
        keep = np.sort(np.random.default_rng(config.seed).choice(keep, config.max_images, replace=False))
    pixels = images.pixels[keep]
    pick = lambda values: [values[i] for i in keep]  # noqa: E731

    if images.case_ids is not None:
        case_ids, is_proxy = pick(images.case_ids), False
    elif config.proxy_cases:
        case_ids, is_proxy = pixel_neighbour_proxy_cases(pixels, seed=config.seed), True
    else:
        case_ids, is_proxy = [f"image-{hashes[i][:16]}" for i in keep], False
    if config.all_test:
        splits = ["test"] * len(keep)
    else:
        splits = [split_of_case(case, config.seed, config.train_fraction, config.val_fraction) for case in case_ids]
    manifest = pd.DataFrame(
        {
            "sha256": pick(hashes),
            "source_path": pick(images.source_paths),
            "size_bytes": pick(images.size_bytes),
            "width": pick(images.widths),
            "height": pick(images.heights),
            "mode": pick(images.modes),
            "case_id": case_ids,
            "case_id_is_proxy": is_proxy,
            "site": pick(images.sites),
            "modality": pd.array(pick(images.modalities) if images.modalities else [None] * len(keep), dtype="string"),
            "label": pd.array(pick(images.labels), dtype="string"),
            "split": splits,
        },
        columns=list(MANIFEST_COLUMNS),
    )
    summary = {
        "images": len(manifest),
        "duplicates_dropped": len(duplicates),
        "duplicate_examples": duplicates[:20],
        "cases": int(manifest["case_id"].nunique()),
        "case_ids_are_proxy": is_proxy,
        "split_counts": manifest["split"].value_counts().to_dict(),
        "labelled": int(manifest["label"].notna().sum()),
        "sites": {str(site): int(count) for site, count in manifest["site"].value_counts().sort_index().items()},
        "modalities": {str(modality): int(count) for modality, count in manifest["modality"].value_counts().sort_index().items()},
        "skipped_non_image": dict(sorted(images.skipped.items())),  # DICOM objects without an image, by SOP class
        "quarantined": images.quarantined,  # undecodable files skipped under IngestConfig.max_bad_fraction
        "read": images.read_stats,  # listed / decoded / decode_cache_hits / files_read / bytes_read
    }
    return manifest, pixels, summary


def labelled_rows(manifest: pd.DataFrame, images: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled images of one split: (images (N, C, H, W) uint8, label names (N,) str, sites (N,) str)."""
    rows = ((manifest["split"] == split) & manifest["label"].notna()).to_numpy()
    return images[rows], manifest.loc[rows, "label"].astype(str).to_numpy(), manifest.loc[rows, "site"].astype(str).to_numpy()
