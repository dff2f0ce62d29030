"""A parquet manifest: a ``.parquet`` file with columns path, case_id, site, label (rules: tasks/image_listing.py).

Paths are relative to the folder holding the manifest and must stay inside it (as for a folder's
metadata.csv); other columns are ignored. Messages number rows from 0, as pandas does.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.config import IngestConfig
from tasks.decode_cache import DecodeCache
from tasks.folder_source import local_records
from tasks.image_listing import ImageRecord, metadata_rows, read_listing
from tasks.sources import SourceError, SourceImages


def list_manifest(manifest: Path) -> list[ImageRecord]:
    if not manifest.is_file():
        raise SourceError(f"manifest {manifest} does not exist")
    try:
        table = pd.read_parquet(manifest)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"{manifest}: not a readable parquet file ({type(error).__name__}: {error})") from error
    return local_records(manifest.parent, metadata_rows(table, str(manifest), first_row=0))


def read_manifest(manifest: Path, config: IngestConfig, cache: DecodeCache) -> SourceImages:
    return read_listing(list_manifest(manifest), lambda record: Path(record.location).read_bytes(), config, cache, str(manifest))
