"""The metadata table of folder, parquet-list and S3 sources, and the ImageRecord each row becomes.

Metadata (``metadata.csv`` in a folder or at an S3 prefix, or a ``.parquet`` image list) has one row per image:
- ``path`` (required): relative to the source root, '/'-separated; not absolute, no '..', listed once;
- ``case_id``, ``site``, ``label`` (optional; blank means unknown). Images of one case_id are two views
  of one patient for MICLe and always land in the same split; an image without a case_id is its own
  case; a blank site is "default".
Other columns are ignored (they do not reach the dataset manifest). With metadata, only the listed
files are read and other files are ignored. Without metadata, every file with an image suffix
(sslflow.data.types.IMAGE_SUFFIXES) is read, without labels, each image its own case.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sslflow.data.types import SourceError

METADATA_FILE = "metadata.csv"


@dataclass(frozen=True)
class ImageRecord:
    """One image file a source lists.

    source_path: relative to the source root (the manifest's ``source_path``);
    location: full path or s3:// URL, for messages and for reading;
    size_bytes: from the file system or the S3 listing (0: the file is refused without reading it);
    version_key: names these exact bytes without reading them (S3: URL + ETag + size); "" if unknown.
    """

    source_path: str
    location: str
    size_bytes: int
    case_id: str | None = None
    site: str = "default"
    label: str | None = None
    version_key: str = ""


def check_relative_path(relative: str, where: str) -> str:
    """``relative`` without empty or '.' parts, or SourceError if it is empty, absolute or has a '..' part."""
    if not relative or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise SourceError(f"{where}: {relative!r} is empty or absolute; paths must be relative to the source root")
    if ".." in re.split(r"[/\\]", relative):
        raise SourceError(f"{where}: {relative!r} contains '..'; paths must stay inside the source root")
    return "/".join(part for part in relative.split("/") if part not in ("", "."))


def parse_metadata_csv(data: bytes, where: str) -> pd.DataFrame:
    """The bytes of a metadata.csv as a table of strings; SourceError if it is not CSV."""
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(
            f"{where}: not parseable as CSV ({type(error).__name__}: {error}); "
            "expected UTF-8 text with a header row such as path,case_id,site,label"
        ) from error


def _text(value) -> str | None:
    """A metadata cell as a stripped string, None when blank or missing (ints stay ints: 3.0 -> '3')."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def metadata_rows(table: pd.DataFrame, where: str, first_row: int) -> list[dict]:
    """Rows of a metadata table as dicts (path, case_id, site, label, where), paths checked.

    first_row: the number the message gives the first data row (2 for a CSV: its line number).
    """
    table = table.rename(columns=lambda column: str(column).strip())
    if "path" not in table.columns:
        raise SourceError(
            f"{where}: missing required column 'path' (columns found: {list(table.columns)}); "
            "expected path,case_id,site,label with paths relative to the source root"
        )
    rows, first_seen = [], {}
    for index, record in enumerate(table.to_dict("records")):
        row_where = f"{where} row {first_row + index}, column 'path'"
        path = check_relative_path(_text(record["path"]) or "", row_where)
        if path in first_seen:
            raise SourceError(f"{row_where}: {path!r} is listed twice (also row {first_seen[path]})")
        first_seen[path] = first_row + index
        rows.append(
            {
                "path": path,
                "case_id": _text(record.get("case_id")),
                "site": _text(record.get("site")) or "default",
                "label": _text(record.get("label")),
                "where": row_where,
            }
        )
    return rows


