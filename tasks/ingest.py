"""ingest: a source (built-in data set, folder, parquet manifest or S3 prefix) -> a Dataset (manifest.parquet + images.npy).

Bad input stops the run here, before any training, with a SourceError naming the file, row or key
(tasks/sources.py lists the sources, tasks/image_listing.py the metadata rules). Raw inputs are only
read; the dataset is written to a temporary folder and renamed into place, so a failed ingest leaves
nothing a later run could mistake for a dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
from flytekit import Cache, HashMethod, Resources, current_context, task
from flytekit.types.directory import FlyteDirectory

from images.specs import cpu_image
from ssl_models.proxy_cases import pixel_neighbour_proxy_cases
from tasks.artifacts import MANIFEST_COLUMNS, Dataset, content_hash, write_dataset
from tasks.config import IngestConfig
from tasks.sources import SourceImages, fingerprint_source, read_source, source_name
from tasks.tracking import stage_run

# A source is named by a string, but Flyte's cache key uses the sha256 of its files' bytes:
# a rerun on unchanged data hits the cache, a changed folder under the same path does not.
SourceUri = Annotated[str, HashMethod(fingerprint_source)]


def split_of_case(case_id: str, seed: int, train_fraction: float, val_fraction: float) -> str:
    """Deterministic split of a whole case: a hash of (seed, case_id) mapped to [0, 1)."""
    position = int(hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()[:12], 16) / float(16**12)
    if position < train_fraction:
        return "train"
    return "val" if position < train_fraction + val_fraction else "test"


def build_manifest(images: SourceImages, config: IngestConfig) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Deduplicate, subsample, assign cases and splits. Returns (manifest, pixels (N, C, H, W), summary)."""
    hashes = [hashlib.sha256(pixels.tobytes()).hexdigest() for pixels in images.pixels]
    _, first = np.unique(hashes, return_index=True)
    keep = np.sort(first)
    duplicates = [images.source_paths[i] for i in sorted(set(range(len(hashes))) - set(keep.tolist()))]
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
        "quarantined": images.quarantined,  # undecodable files skipped under IngestConfig.max_bad_fraction
        "read": images.read_stats,  # listed / decoded / decode_cache_hits / files_read / bytes_read
    }
    return manifest, pixels, summary


@task(
    cache=Cache(version="2", ignored_inputs=("parent_run_id",)),
    container_image=cpu_image,
    requests=Resources(cpu="2", mem="8Gi"),
    retries=2,
)
def ingest(source: SourceUri, config: IngestConfig, parent_run_id: str) -> Annotated[Dataset, HashMethod(content_hash)]:
    """Read ``source``, normalise every image to config.channels x config.image_size^2, and write a Dataset."""
    name = source_name(source)
    with stage_run(parent_run_id, f"ingest:{name}", {"source": source, "config": config}) as run:
        images = read_source(source, config)
        manifest, pixels, summary = build_manifest(images, config)
        directory = Path(current_context().working_directory) / f"dataset-{name}"
        sha256 = write_dataset(directory, manifest, pixels, summary)
        mlflow.log_metrics(
            {
                "images": summary["images"], "cases": summary["cases"], "duplicates_dropped": summary["duplicates_dropped"],
                "quarantined": len(summary["quarantined"]), **{f"read.{key}": value for key, value in summary["read"].items()},
            }
        )  # fmt: skip
        mlflow.log_dict(summary, "ingest_summary.json")
        mlflow.set_tag("dataset.sha256", sha256)
        if summary["case_ids_are_proxy"]:
            mlflow.set_tag("case_ids", "PROXY (pixel-neighbour groups; the source has no real case ids)")
    return Dataset(
        directory=FlyteDirectory(str(directory)),
        name=name,
        num_images=len(manifest),
        content_sha256=sha256,
        mlflow_run_id=run.info.run_id,
    )
