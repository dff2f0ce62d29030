"""A DICOMweb archive query ``dicomweb+https://host/dicom-web?ModalitiesInStudy=CT&StudyDate=20240101-20241231``:
the instances it matches, searched with QIDO-RS and retrieved whole with WADO-RS (dicomweb-client;
connection, credentials, retries: sslflow/data/sources/dicomweb_http.py).

- **The query.** Every parameter is a DICOM attribute (keyword, or tag as 8 hex digits) and its QIDO-RS match
  value (a date range ``20240101-20241231``, a wildcard ``CHEST*``, a list ``CT\\MR``). Study attributes
  (STUDY_ATTRIBUTES: ModalitiesInStudy, StudyDate, StudyDescription, ...) select studies; the others (Modality,
  BodyPartExamined, SeriesDescription, ...) select series of those studies; every instance of a selected series
  is read. The URI is logged and stored (MLflow, Flyte), so it may not hold an identifier: an attribute naming a
  person, a UID or an accession number is refused (QUERY_REFUSED), and so are credentials (they come from the
  environment) and the paging parameters, which ingest sets. ``metadata=<csv>`` (a local path or s3://bucket/key)
  names a metadata.csv keyed by SOPInstanceUID (labels, cases, sites; sslflow/data/metadata.py).
- **The listing.** Studies are searched a page (PAGE_SIZE) at a time (limit/offset), then the series of each study
  (with their NumberOfSeriesRelatedInstances), then the instances of each series: about 1 + studies + series
  requests. The listing streams into a sqlite file on disk and comes back sorted by ``<study>/<series>/<instance>``
  UIDs, each instance's ``source_path`` (its image_key is the HMAC of it, as for a file): a plan holds one chunk in
  memory whatever the number of instances. A query matching no instance is refused, naming the query.
- **What a chunk reads.** Each instance's bytes as the archive stores them (WADO-RS, transfer-syntax=*): a DICOM
  file that ingest decodes, pseudonymises, holds back or refuses exactly as the same file in a folder. The archive
  does not say an instance's size before it is sent, so a record's size is UNKNOWN_SIZE until it is read
  (sslflow/data/listing.py checks zero bytes and IngestConfig.max_file_bytes then).
- **The fingerprint** (ingest's cache key): the sorted (source_path, NumberOfSeriesRelatedInstances) of every
  instance the query lists, and the metadata file's sha256: QIDO-RS only, nothing retrieved. An unchanged query
  on an unchanged archive is a cache hit; a new study, series or instance is not.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from sslflow.data.dicom import IDENTIFYING_KEYWORDS
from sslflow.data.fingerprint import encode_fingerprint
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import (
    METADATA_FILE,
    UNKNOWN_SIZE,
    ImageRecord,
    keyed_by_instance,
    located_name,
    safe_name,
)
from sslflow.data.metadata_catalog import metadata_header
from sslflow.data.sources.dicomweb_http import (
    archive_client,
    archive_errors,
    archive_session,
    check_archive,
    retrieve_instance_bytes,
)
from sslflow.data.sources.s3 import download_object, parse_s3_uri, s3_client
from sslflow.data.types import SourceError, SourceImages

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
PAGE_SIZE = 500  # results per QIDO-RS request: below the cap of common archives (a page shorter than this is the last)
STUDY_ATTRIBUTES = frozenset(
    {
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "StudyDescription",
        "RequestedProcedureDescription",
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
    }
)
NAMING_NO_ONE = {
    "StudyDate",
    "StudyTime",
    "ContentDate",
    "AcquisitionDateTime",
    "PatientSex",
    "PatientAge",
}  # a range or a class of people
QUERY_REFUSED = frozenset(IDENTIFYING_KEYWORDS) - NAMING_NO_ONE
PAGING = ("limit", "offset", "includefield", "fuzzymatching")
STUDY_UID, SERIES_UID, INSTANCE_UID, SERIES_INSTANCES = "0020000D", "0020000E", "00080018", "00201209"
INSERT_BATCH = 1000


@dataclass(frozen=True)
class ArchiveQuery:
    """A parsed source URI: base_url (the DICOMweb root, http(s)), study_filters and series_filters (keyword ->
    match value), metadata (where a metadata.csv keyed by SOPInstanceUID is, or "")."""

    base_url: str
    study_filters: dict[str, str]
    series_filters: dict[str, str]
    metadata: str


def _keyword(name: str, where: str) -> str:
    """The DICOM keyword a query parameter names (a keyword, or a tag as 8 hex digits); SourceError otherwise, naming
    ``where`` (the archive: never the query, which may hold the identifier refused)."""
    keyword = (
        keyword_for_tag(int(name, 16)) if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name) else name
    )
    if not keyword or tag_for_keyword(keyword) is None:
        raise SourceError(
            f"source {where}: {name!r} is not a DICOM attribute keyword (e.g. ModalitiesInStudy, StudyDate, Modality, "
            "BodyPartExamined)"
        )
    if keyword in QUERY_REFUSED or keyword.endswith(("UID", "UIDs")):
        raise SourceError(
            f"source {where}: the query selects by {keyword}, an identifier; a source URI is logged and stored, so it "
            "may not hold one: select by modality, date range, description or body part, or list the instances in "
            "metadata=<csv keyed by sop_instance_uid>"
        )
    return keyword


def parse_dicomweb_uri(uri: str) -> ArchiveQuery:
    """``dicomweb+http(s)://host[:port]/path?Attribute=value&...&metadata=...`` -> ArchiveQuery; SourceError for a URI
    with credentials, a fragment, a repeated or paging parameter, or an attribute that is unknown or identifies."""
    if not uri.startswith(SCHEMES):
        raise SourceError(
            f"{uri!r} is not a DICOMweb source; expected dicomweb+https://host/dicom-web?ModalitiesInStudy=CT"
        )
    parts = urlsplit(uri.removeprefix("dicomweb+"))
    if parts.username or parts.password:
        raise SourceError(
            f"source {parts.hostname}: credentials in the URI would be logged; set SSLFLOW_DICOMWEB_TOKEN or "
            "SSLFLOW_DICOMWEB_USERNAME/PASSWORD"
        )
    if not parts.hostname or parts.fragment:
        raise SourceError(f"source {uri}: expected dicomweb+https://host[:port]/path?query, without a #fragment")
    filters: dict[str, str] = {}
    metadata = ""
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)):
        if name in PAGING:
            raise SourceError(f"source {uri}: {name} is set by ingest, which pages through the results; remove it")
        if name == "metadata":
            metadata = value
            continue
        keyword = _keyword(name, f"dicomweb+{parts.scheme}://{parts.netloc}{parts.path}")
        if keyword in filters:
            raise SourceError(
                f"source {uri}: {keyword} is given twice; give one value (a list is CT\\MR, a range 20240101-20241231)"
            )
        filters[keyword] = value
    base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    study = {keyword: value for keyword, value in filters.items() if keyword in STUDY_ATTRIBUTES}
    return ArchiveQuery(
        base_url, study, {keyword: value for keyword, value in filters.items() if keyword not in study}, metadata
    )


def without_address(url: str) -> str:
    """``url`` (a source URI or an instance's URL) without its scheme and host: what names the same query or instance
    whichever address (a replica, a proxy) of the archive answers it."""
    parts = urlsplit(url)
    return urlunsplit(("", "", parts.path, parts.query, ""))


def _value(result: dict, tag: str, base_url: str, level: str):
    values = (result.get(tag) or {}).get("Value") or [None]
    if values[0] is None:
        raise SourceError(
            f"DICOMweb archive {base_url}: a QIDO-RS {level} result without ({tag[:4]},{tag[4:]}); the archive's "
            "answer is incomplete"
        )
    return values[0]


def _paged(search: Callable[..., list[dict]], base_url: str, what: str, **arguments) -> Iterator[dict]:
    """Every result of a QIDO-RS search, PAGE_SIZE at a time (limit/offset) until a page comes back short (or long: the
    archive ignored the limit and sent everything); SourceError when a page starts as the one before (offset
    ignored)."""
    offset, first = 0, None
    while True:
        with archive_errors(base_url, what):
            page = search(limit=PAGE_SIZE, offset=offset, **arguments)
        if page and page[0] == first:
            raise SourceError(
                f"DICOMweb archive {base_url}, {what}: the archive ignores the offset parameter and sends the same "
                "page again"
            )
        yield from page
        if len(page) != PAGE_SIZE:
            return
        offset, first = offset + len(page), page[0]


def list_instances(client, query: ArchiveQuery) -> Iterator[tuple[str, int]]:
    """("<study>/<series>/<instance>" UIDs, NumberOfSeriesRelatedInstances) of every instance the query selects, in the
    archive's order: studies (study_filters), their series (series_filters), every instance of each series."""
    base = query.base_url
    for study in _paged(
        client.search_for_studies, base, "searching studies (QIDO-RS)", search_filters=query.study_filters
    ):
        study_uid = _value(study, STUDY_UID, base, "study")
        found = _paged(
            client.search_for_series,
            base,
            "searching series (QIDO-RS)",
            study_instance_uid=study_uid,
            search_filters=query.series_filters,
            fields=["NumberOfSeriesRelatedInstances"],
        )
        for series in found:
            series_uid, count = (
                _value(series, SERIES_UID, base, "series"),
                int((series.get(SERIES_INSTANCES) or {}).get("Value", [0])[0]),
            )
            instances = _paged(
                client.search_for_instances,
                base,
                "searching instances (QIDO-RS)",
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
            )
            for instance in instances:
                yield f"{study_uid}/{series_uid}/{_value(instance, INSTANCE_UID, base, 'instance')}", count


@contextmanager
def sorted_on_disk(rows: Iterable[tuple[str, int]]) -> Iterator[Iterator[tuple[str, int]]]:
    """``rows`` (path, count) sorted by path, each path once, through a sqlite file in a temporary folder: memory
    does not grow with the number of rows. Python's str order for ASCII is sqlite's BINARY collation."""
    with tempfile.TemporaryDirectory(prefix="sslflow-dicomweb-listing-") as folder:
        database = sqlite3.connect(Path(folder) / "listing.sqlite")
        try:
            database.execute("CREATE TABLE listing (path TEXT PRIMARY KEY, series_instances INTEGER NOT NULL)")
            rows = iter(rows)
            while batch := list(islice(rows, INSERT_BATCH)):
                database.executemany("INSERT OR REPLACE INTO listing VALUES (?, ?)", batch)  # a page read twice: once
            yield iter(database.execute("SELECT path, series_instances FROM listing ORDER BY path"))
        finally:
            database.close()


class DicomwebSource:
    """A DICOMweb archive query as a Source (sslflow/data/sources/__init__.py; rules: the module docstring)."""

    kind = "dicomweb"

    def __init__(self, uri: str):
        self.uri = uri
        self.query = parse_dicomweb_uri(uri)

    @staticmethod
    def claims(uri: str) -> bool:
        return uri.startswith(SCHEMES)

    @property
    def name(self) -> str:
        """<host>-<path>-<8 hex of the whole URI>: two queries of one archive get two names."""
        parts = urlsplit(self.query.base_url)
        return located_name(safe_name(f"{parts.hostname}{parts.path}".strip("/")), self.uri)

    @property
    def display_name(self) -> str:
        """The name: it holds 8 hex of the URI already."""
        return self.name

    def packaged_images(self, image_size: int, channels: int) -> SourceImages | None:
        """None: its images are instances, listed by ``records``."""
        return None

    def without_server(self, fields: dict, digest: str) -> tuple[dict, str]:
        """The instance's URL without the archive's address (``without_address``)."""
        return {**fields, "location": without_address(fields["location"])}, digest

    @property
    def uri_without_server(self) -> str:
        return without_address(self.uri)

    @functools.cached_property
    def session(self):
        return archive_session(self.query.base_url)

    @functools.cached_property
    def client(self):
        return archive_client(self.query.base_url, self.session)

    def _instances(self) -> Iterator[tuple[str, int]]:
        """list_instances; SourceError naming the query when it selects nothing."""
        empty = True
        for row in list_instances(self.client, self.query):
            empty = False
            yield row
        if empty:
            raise SourceError(
                f"source {self.uri}: the query matches no instance in the archive (studies by "
                f"{self.query.study_filters or 'none'}, series by {self.query.series_filters or 'none'}); check the "
                "attributes and values (dates as YYYYMMDD-YYYYMMDD)"
            )

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]:
        """Every instance the query selects, sorted by source_path (<study>/<series>/<instance> UIDs); the digest names
        the instance and its series' instance count."""
        with sorted_on_disk(self._instances()) as rows:
            for position, (path, count) in enumerate(rows):
                study, series, instance = path.split("/")
                location = f"{self.query.base_url}/studies/{study}/series/{series}/instances/{instance}"
                yield (
                    position,
                    ImageRecord(source_path=path, location=location, size_bytes=UNKNOWN_SIZE),
                    f"series-instances={count}",
                )

    def fingerprint(self) -> str:
        """The sorted listing (source_path, series instance count) by its sha256, and the metadata file's sha256."""
        digest, count = hashlib.sha256(), 0
        with sorted_on_disk(list_instances(self.client, self.query)) as rows:
            for path, instances in rows:
                digest.update(f"{path} {instances}\n".encode())
                count += 1
        metadata = self.instance_rows()
        listing = [metadata.sha256() if metadata is not None else None, count, digest.hexdigest()]
        return encode_fingerprint("dicomweb", self.uri, listing, [])

    def unlisted(self) -> Iterator[str]:
        """None: the query itself chooses the instances, and a metadata file keyed by SOPInstanceUID labels some of
        them."""
        return iter(())

    def check_service(self, timeout_s: float) -> None:
        """One study search, no retry: ArchiveUnavailable when the archive does not answer within ``timeout_s``
        seconds."""
        check_archive(self.query.base_url, timeout_s)

    def read_head(self, record: ImageRecord, count: int) -> bytes:
        return b""  # an instance is retrieved whole (WADO-RS); its listing gives no size to probe by

    def read_bytes(self, record: ImageRecord) -> bytes:
        uids = tuple(record.source_path.split("/"))
        return retrieve_instance_bytes(self.session, self.query.base_url, uids, "retrieving an instance (WADO-RS)")

    @functools.cached_property
    def _metadata_file(self) -> Path | None:
        """The metadata file the URI names, local (one in S3 downloaded, streamed, into a temporary folder this
        source keeps), None without one; SourceError if it cannot be read or is not keyed by SOPInstanceUID (an
        archive has no paths to name)."""
        where = self.query.metadata
        if not where:
            return None
        if where.startswith("s3://"):
            bucket, key = parse_s3_uri(where)
            self._scratch = tempfile.TemporaryDirectory(prefix="sslflow-dicomweb-metadata-")
            path = Path(self._scratch.name) / METADATA_FILE
            if not download_object(s3_client(), bucket, key.rstrip("/"), path):
                raise SourceError(f"source {self.uri}: metadata {where} cannot be read (no such object)")
        else:
            path = Path(where)
            try:
                path.open("rb").close()
            except OSError as error:
                raise SourceError(f"source {self.uri}: metadata {where} cannot be read ({error.strerror})") from error
        if not keyed_by_instance(metadata_header(path, where)):
            raise SourceError(
                f"{where}: the metadata of a DICOMweb source names instances by a sop_instance_uid column (no path "
                f"column), as a {METADATA_FILE} keyed by SOPInstanceUID"
            )
        return path

    def instance_rows(self) -> InstanceMetadata | None:
        """The metadata file keyed by SOPInstanceUID, None without one."""
        path = self._metadata_file
        return InstanceMetadata(path, self.query.metadata, owner=self) if path is not None else None
