"""A parquet image list: a ``.parquet`` file with columns path, case_id, site, label (rules: sslflow/data/metadata.py).

Not to be confused with the dataset manifest that ingest writes (sslflow/data/manifest.py): this is an
input, a list of image files a user hands in. Paths are relative to the folder holding the list and
must stay inside it (as for a folder's metadata.csv); other columns are ignored (never read). Messages number
rows from 0, as pandas does. The list and the files it names must be regular files (never a FIFO or device).
The list is read a record batch at a time (pyarrow's ParquetFile.iter_batches, each batch converted as
pandas.read_parquet converts a table) into a sqlite file on disk with the file each row names
(sslflow/data/metadata_catalog.py, as for a folder's metadata.csv), so the plan holds neither its rows nor the
files. The fingerprint (sslflow/data/fingerprint.py) covers the list and the files it names, nothing else in
its folder, hashed as they stream in path order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from sslflow.data.fingerprint import FileDigests, digested_entries, encode_sorted_fingerprint
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import ImageRecord, located_name, safe_name
from sslflow.data.metadata_catalog import ROW_BATCH, MetadataCatalog
from sslflow.data.regular_files import stat_regular_file
from sslflow.data.sources.folder import add_local_files, catalog_records, digested_records
from sslflow.data.sources.local_files import LocalFiles
from sslflow.data.types import SourceError

READ_COLUMNS = ("path", "case_id", "site", "label")  # the columns a row is made of (metadata.py: path_row)


def parquet_tables(image_list: Path) -> Iterator[pd.DataFrame]:
    """A parquet image list as MetadataCatalog reads it: its header (an empty table with its columns, the index that
    pandas wrote left out, as pandas.read_parquet leaves it), then the columns READ_COLUMNS names (after stripping
    spaces) ROW_BATCH rows at a time; SourceError when it is missing, not a regular file or not readable parquet."""
    stat_regular_file(image_list, "parquet image list", str(image_list), missing="does not exist")
    try:
        with pq.ParquetFile(image_list) as parquet:
            header = parquet.schema_arrow.empty_table().to_pandas()
            yield header
            columns = [column for column in header.columns if str(column).strip() in READ_COLUMNS]
            for batch in parquet.iter_batches(batch_size=ROW_BATCH, columns=columns, use_pandas_metadata=True):
                yield batch.to_pandas()
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(
            f"{image_list}: not a readable parquet file ({type(error).__name__}: {error}); write it again (e.g. "
            "pandas DataFrame.to_parquet) with the columns path, case_id, site, label"
        ) from error


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

    @functools.cached_property
    def _listed_files(self) -> MetadataCatalog:
        """The list's rows, read a batch at a time and checked, with the file each row names, each checked once
        (sslflow/data/metadata_catalog.py, add_local_files): SourceError naming the first failing rows."""
        where = str(self.image_list)
        catalog = MetadataCatalog(parquet_tables(self.image_list), where, first_row=0)
        return add_local_files(catalog, self.image_list.parent, where)

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]:
        """The rows of the list in case order, each with its file's sha256, streamed from the catalog."""
        yield from digested_records(catalog_records(self._listed_files))

    def fingerprint(self) -> str:
        """The list file and the files it names, hashed as they stream in path order (the catalog's)."""
        catalog = self._listed_files  # every row and file checked before anything is hashed
        with FileDigests() as digests:
            listing = digests.record(self.image_list.name, self.image_list, "parquet image list")
        records = (record for _, record in catalog_records(catalog, in_path_order=True))
        return encode_sorted_fingerprint(
            "parquet", self.uri, listing, (entry for _, entry in digested_entries(records))
        )

    def instance_rows(self) -> InstanceMetadata | None:
        return None  # a parquet list names files by path

    def unlisted(self) -> Iterator[str]:
        """None: no folder is listed."""
        return iter(())
