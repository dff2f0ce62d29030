"""An S3 prefix ``s3://bucket/prefix`` read through boto3, with an optional ``metadata.csv`` at the prefix.

Connection settings come from the environment, as for the AWS CLI: the endpoint from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, moto, Ceph, ...), the region from AWS_REGION /
AWS_DEFAULT_REGION / the profile, credentials from AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY,
AWS_PROFILE or an instance role. Credentials are never logged: messages name the bucket, key and
S3 error code only.

Keys below the prefix are the records' ``source_path`` (the manifest's ``image_key`` is their HMAC) (rules of metadata:
sslflow/data/metadata.py). Any key with a '..' part is refused, since it could escape the prefix when mirrored to disk,
and so is a metadata path that names no object under the prefix, and so is a case variant of metadata.csv
(``Metadata.csv``) at the prefix. The listing is streamed page by page in key order and read once per plan; objects
without an image or DICOM suffix are listed unread, as candidates the chunk decodes when they are DICOM
(sslflow/data/listing.py). metadata.csv is read with one GET of its key, streamed to a file, so a chunk that needs
metadata keyed by SOPInstanceUID lists nothing; metadata naming files by path is joined with the listing in a sqlite
file on disk (sslflow/data/metadata_catalog.py), so the plan holds neither its rows nor the objects. The fingerprint
(sslflow/data/fingerprint.py) hashes the listing (keys, ETags, sizes), so deciding whether ingest's cache is still valid
downloads nothing; unchanged objects are not downloaded again either (sslflow/data/decode_cache.py remembers key + ETag
+ size)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, NoCredentialsError
from botocore.exceptions import ConnectionError as S3ConnectionError

from sslflow.data.fingerprint import encode_sorted_fingerprint
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import (
    METADATA_FILE,
    ImageRecord,
    check_relative_path,
    keyed_by_instance,
    located_name,
    metadata_file_name,
    missing_file,
    refuse_rows,
    safe_name,
)
from sslflow.data.metadata_catalog import MetadataCatalog, metadata_header
from sslflow.data.types import DICOM_SUFFIXES, IMAGE_SUFFIXES, SourceError, SourceImages
from sslflow.errors import ServiceUnavailable

SERVICE = "S3 endpoint"
# Error codes of an S3 server that is there but cannot serve now (botocore's standard retry mode retries them:
# botocore.retries.standard, transient and throttled); once boto's retries are used up, an outage, not bad input.
TRANSIENT_CODES = frozenset(
    "RequestTimeout RequestTimeoutException PriorRequestNotComplete Throttling ThrottlingException RequestThrottled "
    "RequestThrottledException TooManyRequestsException RequestLimitExceeded BandwidthLimitExceeded SlowDown".split()
)
METADATA_READ_BYTES = 2**20  # metadata.csv is copied to disk this many bytes at a time


class ObjectStoreUnavailable(ServiceUnavailable):
    """The S3 endpoint did not answer (no connection, a timeout, a 5xx after boto's retries): an outage, not bad
    input."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix is "" or ends in '/'."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise SourceError(f"{uri!r} is not an S3 source; expected s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(*, attempts: int = 3, timeout_s: float = 10):
    """A boto3 S3 client configured from the environment (see the module docstring); ``timeout_s`` to connect (reads
    may take 6 times as long), ``attempts`` tries per request."""
    config = Config(
        retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=timeout_s, read_timeout=6 * timeout_s
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=config)


def _unavailable(what: str, error: Exception) -> ObjectStoreUnavailable:
    endpoint = endpoint_url() or "AWS default"
    return ObjectStoreUnavailable(
        f"{what}: the {SERVICE} {endpoint} did not answer ({type(error).__name__}: {error}). Check that it is running "
        "and reachable from here, or point AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) at one that is.",
        service=SERVICE,
        uri=endpoint,
    )


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Turn boto errors into SourceErrors that say what was being done (never with credentials); an endpoint that does
    not answer (no connection, a timeout, a response cut short, a server error or a throttling or timeout code after
    boto's retries) into ObjectStoreUnavailable."""
    try:
        yield
    except ClientError as error:
        details = error.response.get("Error", {})
        if (
            error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
            or details.get("Code") in TRANSIENT_CODES
        ):
            raise _unavailable(what, error) from error
        raise SourceError(
            f"{what}: S3 error {details.get('Code', '?')} ({details.get('Message', '')}); check the bucket and "
            "prefix, and that the credentials may list and read them"
        ) from error
    except (S3ConnectionError, HTTPClientError, IncompleteReadError) as error:
        raise _unavailable(what, error) from error
    except NoCredentialsError as error:
        raise SourceError(
            f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ) from error
    except BotoCoreError as error:
        raise SourceError(
            f"{what}: {type(error).__name__}: {error} (endpoint {endpoint_url() or 'AWS default'}); "
            "check AWS_ENDPOINT_URL, AWS_REGION and AWS_PROFILE"
        ) from error


def iter_objects(client, bucket: str, prefix: str) -> Iterator[dict]:
    """Every object under the prefix as {"Key", "ETag", "Size"}, streamed a listing page (1,000 keys) at a time in
    key order, as S3 returns them; folder markers skipped. SourceError if the server breaks the order."""
    previous = ""
    with s3_errors(f"listing s3://{bucket}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"] < previous:
                    raise SourceError(
                        f"listing s3://{bucket}/{prefix}: the server returned {item['Key']!r} after {previous!r}, out "
                        "of key order; ingest needs an S3 server that lists keys in order, as the S3 API does"
                    )
                previous = item["Key"]
                if not item["Key"].endswith("/"):
                    yield item


def read_object(client, bucket: str, key: str) -> bytes:
    with s3_errors(f"reading s3://{bucket}/{key}"):
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def download_object(client, bucket: str, key: str, path: Path) -> bool:
    """Write the object at ``key`` to ``path``, streamed (never whole in memory); False when there is no such
    object."""
    with s3_errors(f"reading s3://{bucket}/{key}"):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise
        with path.open("wb") as file:
            shutil.copyfileobj(body, file, METADATA_READ_BYTES)
    return True


def _without_endpoint(version_key: str) -> str:
    return version_key.split(" ", 1)[-1]


class S3Source:
    """An S3 prefix as a Source (sslflow/data/sources/__init__.py; rules: the module docstring)."""

    kind = "s3"

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.where = f"s3://{self.bucket}/{self.prefix}"

    @staticmethod
    def claims(uri: str) -> bool:
        return uri.startswith("s3://")

    @property
    def name(self) -> str:
        return safe_name(self.uri.removeprefix("s3://").strip("/"))

    @property
    def display_name(self) -> str:
        """bucket-prefix and 8 hex of the URI (without a final /)."""
        return located_name(self.name, self.uri.rstrip("/"))

    def packaged_images(self, image_size: int, channels: int) -> SourceImages | None:
        """None: its images are files, listed by ``records``."""
        return None

    def without_server(self, fields: dict, digest: str) -> tuple[dict, str]:
        """The version key and digest ("<endpoint> <url> <etag> <size>", ``_record``) without the endpoint."""
        return {**fields, "version_key": _without_endpoint(fields["version_key"])}, _without_endpoint(digest)

    @property
    def uri_without_server(self) -> str:
        return self.uri

    @functools.cached_property
    def client(self):
        return s3_client()

    @functools.cached_property
    def _metadata_file(self) -> Path | None:
        """The prefix's metadata.csv, downloaded with one GET (no listing) into a temporary folder this source keeps
        (streamed to disk: never whole in memory); None if there is none."""
        key = f"{self.prefix}{METADATA_FILE}"
        self._scratch = tempfile.TemporaryDirectory(prefix="sslflow-s3-metadata-")
        path = Path(self._scratch.name) / METADATA_FILE
        return path if download_object(self.client, self.bucket, key, path) else None

    @functools.cached_property
    def _metadata_by_path(self) -> bool:
        """Whether the prefix has a metadata.csv naming files by path (not keyed by SOPInstanceUID): its header only."""
        if self._metadata_file is None:
            return False
        return not keyed_by_instance(metadata_header(self._metadata_file, f"{self.where}{METADATA_FILE}"))

    @functools.cached_property
    def _catalog(self) -> MetadataCatalog:
        """metadata.csv's rows and the listing, joined on disk (sslflow/data/metadata_catalog.py): read once, and
        memory does not grow with the rows or objects."""
        catalog = MetadataCatalog.from_csv(self._metadata_file, f"{self.where}{METADATA_FILE}")
        catalog.add_objects(
            (path, item["Key"], int(item["Size"]), item["ETag"]) for path, item in self._objects(refuse_variants=True)
        )
        return catalog

    def _objects(self, *, refuse_variants: bool = False) -> Iterator[tuple[str, dict]]:
        """(path below the prefix, object) of every object, streamed in key order; SourceError for a key that is
        absolute or has '..' below the prefix, and (refuse_variants) for a case variant of metadata.csv beside it."""
        for item in iter_objects(self.client, self.bucket, self.prefix):
            path = check_relative_path(item["Key"][len(self.prefix) :], f"s3://{self.bucket}/{item['Key']}")
            if refuse_variants and "/" not in path and path.lower() == METADATA_FILE:
                metadata_file_name({path, METADATA_FILE}, self.where)
            yield path, item

    def _record(self, path: str, item: dict, row: dict | None = None) -> ImageRecord:
        location = f"s3://{self.bucket}/{item['Key']}"
        named = row or {"case_id": None, "site": "default", "label": None}
        return ImageRecord(
            source_path=path,
            location=location,
            size_bytes=int(item["Size"]),
            case_id=named["case_id"],
            site=named["site"],
            label=named["label"],
            version_key=f"{endpoint_url() or 'aws'} {location} {item['ETag']} {item['Size']}",
            sniff=row is None and os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES + DICOM_SUFFIXES,
        )

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]:
        """The rows of metadata.csv in case order, or else (no metadata, or metadata keyed by SOPInstanceUID) every
        object but metadata.csv, streamed from the listing in key order; objects without an image or DICOM suffix
        as candidates (``sniff``: nothing is read here). The digest is the record's version_key."""
        if self._metadata_by_path:
            yield from self._listed()
            return
        position, has_metadata = 0, self._metadata_file is not None
        for path, item in self._objects():
            if "/" not in path and path.lower() == METADATA_FILE:
                metadata_file_name(
                    {path} | ({METADATA_FILE} if has_metadata else set()), self.where
                )  # refuses a case variant
            if path != METADATA_FILE:
                record = self._record(path, item)
                yield position, record, record.version_key
                position += 1

    def _listed(self) -> Iterator[tuple[int, ImageRecord, str]]:
        """The objects metadata.csv lists, in case order; SourceError for rows naming no object under the prefix."""
        missing, count = self._catalog.missing()
        problems = [
            SourceError(f"{row['where']}: {row['path']!r} {missing_file(row['path'], self.where)}") for row in missing
        ]
        refuse_rows(problems, f"{self.where}{METADATA_FILE}", count=count)
        for position, row, (key, size, etag) in self._catalog.rows_in_case_order():
            record = self._record(row["path"], {"Key": key, "Size": size, "ETag": etag}, row)
            yield position, record, record.version_key

    def unlisted(self) -> Iterator[str]:
        """The image objects (by suffix) under the prefix that its metadata.csv does not list, in key order (none
        without metadata naming paths)."""
        if not self._metadata_by_path:
            return
        suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
        yield from (path for path in self._catalog.unlisted() if os.path.splitext(path)[1].lower() in suffixes)

    def check_service(self, timeout_s: float) -> None:
        """One listing request of one key, no retry: ObjectStoreUnavailable when the endpoint does not answer within
        ``timeout_s`` seconds; SourceError when it answers with an error (no such bucket, access denied)."""
        with s3_errors(f"listing s3://{self.bucket}/{self.prefix}"):
            s3_client(attempts=1, timeout_s=timeout_s).list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1
            )

    def fingerprint(self) -> str:
        """Every object below the prefix by key, size and ETag (the listing only: nothing is downloaded), hashed as the
        listing pages come: memory does not grow with the number of objects. A key with '..' or a case variant of
        metadata.csv is refused here too."""
        metadata_names: set[str] = (
            set()
        )  # metadata.csv and its case variants at the prefix's root: refused if ambiguous

        def files() -> Iterator[list]:
            for path, item in self._objects():
                if "/" not in path and path.lower() == METADATA_FILE:
                    metadata_names.add(path)
                yield [path, int(item["Size"]), item["ETag"]]

        fingerprint = encode_sorted_fingerprint("s3", self.uri, None, files())  # the listing's key order, streamed
        metadata_file_name(metadata_names, self.where)
        return fingerprint

    def read_bytes(self, record: ImageRecord) -> bytes:
        return read_object(self.client, self.bucket, record.location.removeprefix(f"s3://{self.bucket}/"))

    def read_head(self, record: ImageRecord, count: int) -> bytes:
        key = record.location.removeprefix(f"s3://{self.bucket}/")
        with s3_errors(f"reading the first {count} bytes of s3://{self.bucket}/{key}"):
            return self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{count - 1}")["Body"].read()

    def instance_rows(self) -> InstanceMetadata | None:
        """metadata.csv when it names DICOM files by SOPInstanceUID, else None (its header alone is read): one GET
        (streamed to disk), no listing."""
        if self._metadata_file is None or self._metadata_by_path:
            return None
        return InstanceMetadata(self._metadata_file, f"{self.where}{METADATA_FILE}", owner=self)
