"""A parquet image list: a ``.parquet`` file with columns path, case_id, site, label (rules: sslflow/data/metadata.py).

Not to be confused with the dataset manifest that ingest writes (sslflow/data/manifest.py): this is an
input, a list of image files a user hands in. Paths are relative to the folder holding the list and
must stay inside it (as for a folder's metadata.csv); other columns are ignored. Messages number rows
from 0, as pandas does. The list and the files it names must be regular files (never a FIFO or device).
The fingerprint (sslflow/data/fingerprint.py) covers the list and the files it names, nothing else in
its folder.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslflow.data.folder import local_records, stat_regular_file
from sslflow.data.metadata import ImageRecord, metadata_rows
from sslflow.data.types import SourceError


def list_parquet_list(image_list: Path) -> list[ImageRecord]:
    """The images a parquet list names, each checked to be a regular file inside the list's folder."""
    stat_regular_file(image_list, "parquet image list", str(image_list), missing="does not exist")
    try:
        table = pd.read_parquet(image_list)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"{image_list}: not a readable parquet file ({type(error).__name__}: {error})") from error
    return local_records(image_list.parent, metadata_rows(table, str(image_list), first_row=0))
