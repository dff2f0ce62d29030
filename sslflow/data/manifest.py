"""The dataset manifest: the table ingest writes, one row per image with its content hash, key, case,
site, label and split (the parquet *input* a user may hand in is an image list: sslflow/data/sources/parquet_list.py).

An image is known by its ``image_key``: "file-" + HMAC of its path in the source (sslflow/data/pseudonyms.py),
"#frame=<n>" for the frames of a multi-frame DICOM object; no path reaches the manifest or the summary.

Pure pandas/numpy (no Flyte): the join of ingest's chunks (sslflow/data/chunks.py) calls decoded_table and
finish_manifest."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ssl_models.proxy_cases import pixel_neighbour_proxy_cases
from sslflow.config import IngestConfig
from sslflow.data.dicom_identity import deidentification
from sslflow.data.leakage import case_id_sources, leakage_warnings
from sslflow.data.types import SourceError, SourceImages

IMAGE_COLUMNS = (
    "sha256",
    "image_key",
    "size_bytes",
    "width",
    "height",
    "mode",
    "case_id",
    "case_id_is_proxy",
    "site",
    "modality",
    "label",
    "split",
    "pixel_mean",
    "pixel_std",
)
MANIFEST_COLUMNS = (*IMAGE_COLUMNS, "shard", "shard_row")  # + where the image is: sslflow/data/dataset.py
MAX_LISTED_CONFLICTS = 20


def split_of_case(
    case_id: str, seed: int, train_fraction: float, val_fraction: float, gate_fraction: float = 0.0
) -> str:
    """Deterministic split of a whole case: a hash of (seed, case_id) mapped to [0, 1), cut at the
    cumulative fractions train | val | gate | test. A case keeps its split when other cases are added."""
    position = int(hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()[:12], 16) / float(16**12)
    for split, end in (
        ("train", train_fraction),
        ("val", train_fraction + val_fraction),
        ("gate", train_fraction + val_fraction + gate_fraction),
    ):
        if position < end:
            return split
    return "test"


def deduplicate(hashes: list[str], labels: list, image_keys: list[str]) -> tuple[np.ndarray, list[str]]:
    """One row per distinct image (``hashes``: sha256 of each image's decoded pixels; labels, image keys per row).

    Returns (indices kept, ascending; keys of the dropped copies). Of identical images the first
    labelled one is kept, else the first: an unlabelled copy never hides a label. Raises SourceError
    naming the files and their labels when identical images have different labels.
    """
    rows_of_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        rows_of_hash.setdefault(digest, []).append(index)
    keep, conflicts = [], []
    for rows in rows_of_hash.values():
        labelled = [row for row in rows if labels[row] is not None]
        keep.append(labelled[0] if labelled else rows[0])
        conflicts += [
            f"{image_keys[labelled[0]]} (label {labels[labelled[0]]!r}) and {image_keys[row]} (label {labels[row]!r})"
            for row in labelled[1:]
            if labels[row] != labels[labelled[0]]
        ]
    if conflicts:
        refuse_label_conflicts(conflicts)
    kept = set(keep)
    return np.array(sorted(kept), dtype=np.int64), [image_keys[i] for i in range(len(hashes)) if i not in kept]


def refuse_label_conflicts(conflicts: list[str]) -> None:
    """SourceError naming the pairs of identical images with different labels (``conflicts``: one sentence a pair,
    "<key> (label <label>) and <key> (label <label>)"), the first MAX_LISTED_CONFLICTS of them."""
    more = f"\n  ... and {len(conflicts) - MAX_LISTED_CONFLICTS} more" if len(conflicts) > MAX_LISTED_CONFLICTS else ""
    raise SourceError(
        f"{len(conflicts)} pair(s) of identical images (same decoded pixels) have different labels; only one copy "
        "is kept, so one label would be dropped silently (the images are named by their keys):\n  "
        + "\n  ".join(conflicts[:MAX_LISTED_CONFLICTS])
        + more
        + "\nCorrect the label or remove the copy; `python -m sslflow.data.image_keys <source> <key>...` names "
        "their files"
    )


def public_quarantined(quarantined: list[dict]) -> list[dict]:
    """What the dataset may say of skipped files: the key, the reason naming the key, and why held back (no path)."""
    return [
        {
            "image_key": item["image_key"],
            "problem": item["public_problem"],
            **({"held_back": item["held_back"]} if item.get("held_back") else {}),
        }
        for item in quarantined
    ]


def one_per_instance(instances: list[str], lossless: list[bool], labels: list) -> tuple[np.ndarray, int]:
    """One row per SOPInstanceUID (``instances``: its pseudonym per row, "" for none: always kept): the first lossless
    copy, else the first labelled one, else the first. Returns (indices kept, ascending; copies dropped)."""
    best: dict[str, int] = {}
    kept = []
    for index, instance in enumerate(instances):
        if not instance:
            kept.append(index)
            continue
        rank = lambda row: (not lossless[row], labels[row] is None, row)  # noqa: E731
        if instance not in best or rank(index) < rank(best[instance]):
            best[instance] = index
    chosen = np.array(sorted(kept + list(best.values())), dtype=np.int64)
    return chosen, len(instances) - len(chosen)


def _per_image(values: list, count: int, default) -> list:
    return list(values) if values else [default] * count


STATISTICS_ROWS = 256


def _per_row(flat: np.ndarray, statistic) -> np.ndarray:
    """statistic(row) in float64 for each row of ``flat`` (N, D) uint8, STATISTICS_ROWS rows at a time: numpy's std
    subtracts the mean into a float64 array of its whole input, 8 x the images' bytes for a whole chunk at once."""
    blocks = [
        statistic(flat[start : start + STATISTICS_ROWS], axis=1, dtype=np.float64)
        for start in range(0, len(flat), STATISTICS_ROWS)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0)


def decoded_table(images: SourceImages, config: IngestConfig) -> pd.DataFrame:
    """One row per decoded image, in source order: content hash, file facts, case (None when the source has
    none; PROXY cases among these images with config.proxy_cases), site, DICOM modality, label, pixel mean and
    std; and, for the join only (not manifest columns): case_source, instance, lossless."""
    flat = images.pixels.reshape(
        len(images.pixels), int(np.prod(images.pixels.shape[1:]))
    )  # (0, C*H*W) for a chunk without images
    count = len(flat)
    case_sources = _per_image(images.case_sources, count, "unknown")
    if images.case_ids is not None:
        case_ids, is_proxy = list(images.case_ids), False
    elif config.proxy_cases:
        case_ids, is_proxy = pixel_neighbour_proxy_cases(images.pixels, seed=config.seed), True
        case_sources = ["proxy"] * count
    else:
        case_ids, is_proxy = [None] * count, False
    return pd.DataFrame(
        {
            "sha256": [hashlib.sha256(pixels.tobytes()).hexdigest() for pixels in images.pixels],
            "image_key": images.image_keys or images.source_paths,
            "size_bytes": images.size_bytes,
            "width": images.widths,
            "height": images.heights,
            "mode": images.modes,
            "case_id": case_ids,
            "case_id_is_proxy": is_proxy,
            "site": images.sites,
            "modality": pd.array(images.modalities if images.modalities else [None] * len(flat), dtype="string"),
            "label": pd.array(images.labels, dtype="string"),
            "pixel_mean": _per_row(flat, np.mean),
            "pixel_std": _per_row(flat, np.std),
            "case_source": case_sources,
            "instance": _per_image(images.instances, count, ""),
            "lossless": _per_image(images.lossless, count, True),
        }
    )


def with_cases_and_splits(rows: pd.DataFrame, has_cases: bool, config: IngestConfig) -> pd.DataFrame:
    """``rows`` (image_key, sha256, case_id) with a case for every image and its split: an image without a case is a
    case of its own, named from its key when some image of the source has a case (``has_cases``), else from its
    content; the split is the case's (split_of_case). Changes ``rows`` in place and returns it."""
    fallback = [
        f"image-{hashlib.sha256(key.encode()).hexdigest()[:12]}" if has_cases else f"image-{digest[:16]}"
        for key, digest in zip(rows["image_key"], rows["sha256"])
    ]
    rows["case_id"] = [
        case if case is not None and not pd.isna(case) else other for case, other in zip(rows["case_id"], fallback)
    ]
    train, val = (0.0, 0.0) if config.all_test else (config.train_fraction, config.val_fraction)
    rows["split"] = [split_of_case(case, config.seed, train, val, config.gate_fraction) for case in rows["case_id"]]
    return rows


def finish_manifest(table: pd.DataFrame, config: IngestConfig) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Deduplicate, subsample, name cases, assign splits. table: decoded_table rows (of one or many chunks, in
    source order; extra columns are carried in the index). Returns (manifest (IMAGE_COLUMNS), rows of
    ``table`` kept, summary).

    An image's split depends only on its case id, or on its content hash when the source has no cases:
    never on its position or on which other images exist. Raises SourceError when identical images have
    different labels (deduplicate).
    """
    labels = [None if pd.isna(label) else label for label in table["label"]]
    instances, instance_copies = one_per_instance(table["instance"].tolist(), table["lossless"].tolist(), labels)
    kept, duplicates = deduplicate(
        table["sha256"].iloc[instances].tolist(),
        [labels[i] for i in instances],
        table["image_key"].iloc[instances].tolist(),
    )
    keep = instances[kept]
    if config.max_images and len(keep) > config.max_images:
        keep = np.sort(np.random.default_rng(config.seed).choice(keep, config.max_images, replace=False))
    manifest = table.iloc[keep].reset_index(drop=True)
    manifest = with_cases_and_splits(manifest, manifest["case_id"].notna().any(), config)
    sources = case_id_sources(manifest["case_source"].value_counts().to_dict())
    manifest = manifest[list(IMAGE_COLUMNS)]
    summary = {
        "images": len(manifest),
        "duplicates_dropped": len(duplicates),
        "duplicate_examples": duplicates[:20],
        "instance_copies_dropped": instance_copies,  # a second file of one SOPInstanceUID (the lossless copy is kept)
        "cases": int(manifest["case_id"].nunique()),
        "case_ids_are_proxy": bool(manifest["case_id_is_proxy"].any()),
        "case_ids": sources,
        "warnings": leakage_warnings(sources, len(manifest)),
        "split_counts": manifest["split"].value_counts().to_dict(),
        "labelled": int(manifest["label"].notna().sum()),
        "sites": {str(site): int(count) for site, count in manifest["site"].value_counts().sort_index().items()},
        "modalities": {
            str(modality): int(count) for modality, count in manifest["modality"].value_counts().sort_index().items()
        },
        "deidentification": {
            "image_keys": "file- + HMAC-SHA256(project key, path in the source); no path is kept",
            "dicom": deidentification(config) if manifest["modality"].notna().any() else None,
        },
    }
    return manifest, keep, summary


def labelled_rows(manifest: pd.DataFrame, images: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled images of one split: (images (N, C, H, W) uint8, label names (N,) str, sites (N,) str)."""
    rows = ((manifest["split"] == split) & manifest["label"].notna()).to_numpy()
    return (
        images[rows],
        manifest.loc[rows, "label"].astype(str).to_numpy(),
        manifest.loc[rows, "site"].astype(str).to_numpy(),
    )
