"""The metadata table of folder, parquet-list and S3 sources, and the ImageRecord each row becomes.

Metadata (``metadata.csv`` in a folder or at an S3 prefix, or a ``.parquet`` image list) has one row per image:
- ``path`` (required): relative to the source root, '/'-separated; not absolute, no '..', listed once;
- ``case_id``, ``site``, ``label`` (optional; blank means unknown). Images of one case_id are two views
  of one patient for MICLe and always land in the same split; an image without a case_id is its own
  case; a blank site is "default".
A path must not contain a NUL byte, and no part of it may be longer than NAME_MAX_BYTES in UTF-8 (nor
the whole path longer than PATH_MAX_BYTES), the limits of common file systems. Labels are spelled one
way whatever the source (canonical_label): a number equal to an integer is written as that integer,
so ``1``, ``1.0``, ``01`` and ``1e0`` in a CSV, and 1 or 1.0 in a parquet column, are all class ``1``.
Other columns are ignored (they do not reach the dataset manifest). With metadata, only the listed
files are read; other image files are counted by key, or refused (IngestConfig.unlisted_files:
sslflow/data/chunks.py). Without metadata, every file with an image suffix
(sslflow.data.types.IMAGE_SUFFIXES) is read, without labels, each image its own case, and every other
file (but metadata.csv) is a candidate (``ImageRecord.sniff``), read as DICOM when its bytes say so.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd

from sslflow.data.types import SourceError

METADATA_FILE = "metadata.csv"
NAME_MAX_BYTES = 255  # one file or folder name (ext4, XFS, APFS, NTFS)
PATH_MAX_BYTES = 4095  # a whole path (Linux PATH_MAX, less its NUL)
ROWS_NAMED = 5  # a refusal of several metadata rows names the first this many
UNLISTED_NAMED = 20  # image files metadata.csv does not list: the summary and messages name the first this many
UNKNOWN_SIZE = (
    -1
)  # ImageRecord.size_bytes of a file whose listing does not say (a DICOMweb instance): checked once read
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class ImageRecord:
    """One image file a source lists.

    source_path: relative to the source root (never in the dataset: its HMAC is the manifest's ``image_key``);
    location: full path or s3:// URL, for messages and for reading;
    size_bytes: from the file system or the S3 listing (0, or over IngestConfig.max_file_bytes: the file
        is refused without reading it); UNKNOWN_SIZE when the listing does not say (checked once read);
    version_key: names these exact bytes without reading them (S3: URL + ETag + size); "" if unknown;
    sniff: a file without an image or DICOM suffix, listed unread: ingest decodes it when its bytes start
        with a DICOM preamble and skips it (counted, never quarantined) otherwise.
    """

    source_path: str
    location: str
    size_bytes: int
    case_id: str | None = None
    site: str = "default"
    label: str | None = None
    version_key: str = ""
    sniff: bool = False


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def check_relative_path(relative: str, where: str) -> str:
    """``relative`` without empty or '.' parts, or SourceError naming ``where`` if it cannot name a file
    inside the source root: empty, absolute, a '..' part, a NUL byte, or a name or path too long."""
    if not relative or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise SourceError(
            f"{where}: {relative!r} is empty or absolute: write the path relative to the source root (e.g. "
            "'site-a/scan1.png')"
        )
    if ".." in re.split(r"[/\\]", relative):
        raise SourceError(
            f"{where}: {relative!r} contains '..'; paths must stay inside the source root: write the path relative to "
            "the source root, or copy the file into it"
        )
    nul = relative.find("\0")
    if nul >= 0:
        raise SourceError(
            f"{where}: {relative!r} contains a NUL byte (\\x00) at character {nul}, which no file name can hold; "
            "fix the path or rename the file"
        )
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    for part in parts:
        if _utf8_length(part) > NAME_MAX_BYTES:
            raise SourceError(
                f"{where}: the name {part[:40]!r}... is {_utf8_length(part)} bytes in UTF-8, longer than the "
                f"{NAME_MAX_BYTES} a file or folder name may have; fix the path or rename the file"
            )
    if _utf8_length(relative) > PATH_MAX_BYTES:
        raise SourceError(
            f"{where}: the path is {_utf8_length(relative)} bytes in UTF-8, longer than the {PATH_MAX_BYTES} a path "
            "may have; shorten it (rename its folders or the file)"
        )
    return "/".join(parts)


def parse_metadata_csv(data: bytes, where: str) -> pd.DataFrame:
    """The bytes of a metadata.csv as a table of strings; SourceError if it is not CSV."""
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(
            f"{where}: not parseable as CSV ({type(error).__name__}: {error}); "
            "save it as UTF-8 CSV text with a header row such as path,case_id,site,label"
        ) from error


def cell_text(value) -> str | None:
    """A metadata cell as a stripped string, None when blank or missing (ints stay ints: 3.0 -> '3')."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def canonical_label(value) -> str | None:
    """A metadata cell as a label: the one spelling every source (CSV, parquet, S3) gives a class.

    Blank or missing -> None. A plain decimal number (digits, optional sign, point and exponent; what
    PLAIN_NUMBER matches) that is finite and equal to an integer -> that integer in decimal: "1.0",
    "01", "+1", "1e0", " 1 " and a parquet 1 or 1.0 all become "1", "-0" becomes "0". Everything
    else is kept as given (stripped): non-integral numbers ("0.5", "1e-1"), "nan", "inf", "1_000",
    "0x1" and text labels. The value is read exactly (decimal.Decimal), never rounded through float.
    """
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    text = str(value).strip()  # a float prints as its shortest round-trip spelling: 1.0, 0.1, 1e+20
    if not text:
        return None
    if PLAIN_NUMBER.fullmatch(text) and math.isfinite(float(text)):
        number = Decimal(text)
        if number == number.to_integral_value():
            return str(int(number))
    return text


def refuse_rows(problems: list[SourceError], what: str, *, count: int | None = None) -> None:
    """Raise the first of ``problems`` (one SourceError per failing row of ``what``, in row order); where several rows
    fail, the message says how many and names the next few (ROWS_NAMED in all), so one run shows what to fix.
    count: how many rows fail, when ``problems`` holds only the first ROWS_NAMED of them (default: len(problems))."""
    count = len(problems) if count is None else count
    if count == 1:
        raise problems[0]
    if problems:
        more = "; ".join(str(problem) for problem in problems[1:ROWS_NAMED]) + ("; ..." if count > ROWS_NAMED else "")
        raise SourceError(f"{problems[0]}. {count} rows of {what} fail; the next: {more}") from problems[0]


def missing_file(relative: str, place: str) -> str:
    """How a refusal of a metadata row naming no file under ``place`` goes on after "<row>: '<path>' ": what to do."""
    if "\\" in relative:
        return (
            f"does not exist in {place}; the path uses '\\' (Windows) separators: write it with '/', "
            f"as {relative.replace(chr(92), '/')!r}"
        )
    return f"does not exist in {place}: add the file, or correct or remove the row"


def metadata_rows(table: pd.DataFrame, where: str, first_row: int) -> list[dict]:
    """Rows of a metadata table as dicts (path, case_id, site, label, where), paths checked.

    first_row: the number the message gives the first data row (2 for a CSV: its line number). A refusal names the
    first failing row, and how many fail (refuse_rows).
    """
    table = check_path_column(table, where)
    rows, first_seen, problems = [], {}, []
    for index, record in enumerate(table.to_dict("records")):
        try:
            row = path_row(record, f"{where} row {first_row + index}, column 'path'")
        except SourceError as problem:
            problems.append(problem)
            continue
        if row["path"] in first_seen:
            problems.append(listed_twice(row, first_seen[row["path"]]))
            continue
        first_seen[row["path"]] = first_row + index
        rows.append(row)
    refuse_rows(problems, where)
    return rows


def check_path_column(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """``table`` with its column names stripped; SourceError when it has no ``path`` column."""
    table = table.rename(columns=lambda column: str(column).strip())
    if "path" not in table.columns:
        raise SourceError(
            f"{where}: missing required column 'path' (columns found: {list(table.columns)}); "
            "name the column of paths relative to the source root 'path', as in the header row path,case_id,site,label"
        )
    return table


def path_row(record: dict, row_where: str) -> dict:
    """One metadata row (a record of a table with a ``path`` column) as a dict (path, case_id, site, label, where);
    SourceError naming ``row_where`` for a path that is empty, absolute, has '..' or is too long."""
    return {
        "path": check_relative_path(cell_text(record["path"]) or "", row_where),
        "case_id": cell_text(record.get("case_id")),
        "site": cell_text(record.get("site")) or "default",
        "label": canonical_label(record.get("label")),
        "where": row_where,
    }


def listed_twice(row: dict, first_row: int) -> SourceError:
    return SourceError(
        f"{row['where']}: {row['path']!r} is listed twice (also row {first_row}); remove one of the rows"
    )


INSTANCE_COLUMN = "sop_instance_uid"


def keyed_by_instance(table: pd.DataFrame) -> bool:
    """Whether a metadata table names DICOM files by SOPInstanceUID (a ``sop_instance_uid`` column, no ``path``)."""
    columns = {str(column).strip() for column in table.columns}
    return INSTANCE_COLUMN in columns and "path" not in columns


def in_case_order(rows: list[dict]) -> list[tuple[int, dict]]:
    """(position, row) of metadata rows ordered by case (the path for a row without one), then path: the order
    ingest cuts a listing into chunks in (sslflow/data/chunks.py), so the images of a case are neighbours."""
    return sorted(enumerate(rows), key=lambda item: (item[1]["case_id"] or item[1]["path"], item[1]["path"]))


def metadata_file_name(names: Collection[str], where: str) -> str | None:
    """METADATA_FILE when ``names`` (the entries at a source's root) include it, else None.

    A case variant (``Metadata.csv``, ``METADATA.CSV``, ...) is refused with a SourceError naming it,
    alone (rename it) or beside metadata.csv or another variant (ambiguous): never silently ignored.
    where: the folder or S3 prefix, for the message.
    """
    variants = sorted(name for name in names if name.lower() == METADATA_FILE and name != METADATA_FILE)
    found = ([METADATA_FILE] if METADATA_FILE in names else []) + variants
    if len(found) > 1:
        raise SourceError(
            f"{where}: {' and '.join(found)} found; which one holds the metadata is ambiguous: "
            f"keep one file, named {METADATA_FILE}"
        )
    if variants:
        raise SourceError(
            f"{where}: found {variants[0]!r} but the metadata file must be named exactly {METADATA_FILE!r} "
            f"(lower case): rename it to {METADATA_FILE}, or remove it to read the images without metadata"
        )
    return METADATA_FILE if METADATA_FILE in names else None


def safe_name(text: str) -> str:
    """``text`` safe as a file name: every character but letters, digits and -_. becomes '-' ("source" if empty)."""
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in text) or "source"


def located_name(name: str, location: str) -> str:
    """``name``-<8 hex of ``location``>: a source's display name, one per place its data lives."""
    return f"{name}-{hashlib.sha256(location.encode()).hexdigest()[:8]}"
