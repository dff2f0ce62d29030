"""A parquet image list: a ``.parquet`` file with columns path, case_id, site, label (rules: sslflow/data/metadata.py).

Not to be confused with the dataset manifest that ingest writes (sslflow/data/manifest.py): this is an
input, a list of image files a user hands in. Paths are relative to the folder holding the list and
must stay inside it (as for a folder's metadata.csv); other columns are ignored. Messages number rows
from 0, as pandas does. The list and the files it names must be regular files (never a FIFO or device).
The fingerprint (sslflow/data/fingerprint.py) covers the list and the files it names, nothing else in
its folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from sslflow.data.fingerprint import FileDigests, digested, encode_fingerprint
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import ImageRecord, located_name, metadata_rows, safe_name
from sslflow.data.regular_files import stat_regular_file
from sslflow.data.sources.folder import in_case_order_records, local_records
from sslflow.data.sources.local_files import LocalFiles
from sslflow.data.types import SourceError


def list_parquet_list(image_list: Path) -> list[tuple[int, ImageRecord]]:
    """(row position, record) of the images a parquet list names, in case order, each checked to be a regular file
    inside the list's folder."""
    stat_regular_file(image_list, "parquet image list", str(image_list), missing="does not exist")
    try:
        table = pd.read_parquet(image_list)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(
            f"{image_list}: not a readable parquet file ({type(error).__name__}: {error}); write it again (e.g. "
            "pandas DataFrame.to_parquet) with the columns path, case_id, site, label"
        ) from error
    rows = metadata_rows(table, str(image_list), first_row=0)
    return in_case_order_records(rows, local_records(image_list.parent, rows, str(image_list)))


class ParquetListSource(LocalFiles):
    """A parquet image list as a Source (sslflow/data/sources/__init__.py)."""

    kind = "parquet"

    def __init__(self, uri: str):
        self.uri, self.image_list = uri, Path(uri)

    @staticmethod
    def claims(uri: str) -> bool:
        return uri.endswith(".parquet")

    @property
    def name(self) -> str:
        return safe_name(self.image_list.stem)

    @property
    def display_name(self) -> str:
        """The list's name and 8 hex of its absolute path."""
        return located_name(self.name, str(self.image_list.resolve()))

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]:
        """The rows of the list in case order, each with its file's sha256."""
        listed = list_parquet_list(self.image_list)
        positions = [position for position, _ in listed]
        yield from (
            (position, record, sha256)
            for position, (record, sha256) in zip(positions, digested(record for _, record in listed))
        )

    def fingerprint(self) -> str:
        """The list file and the files it names."""
        records = [record for _, record in list_parquet_list(self.image_list)]
        with FileDigests() as digests:
            listing = digests.record(self.image_list.name, self.image_list, "parquet image list")
            files = digests.records([(record.source_path, record.location, record.location) for record in records])
        return encode_fingerprint("parquet", self.uri, listing, files)

    def instance_rows(self) -> InstanceMetadata | None:
        return None  # a parquet list names files by path

    def unlisted(self) -> Iterator[str]:
        """None: no folder is listed."""
        return iter(())
