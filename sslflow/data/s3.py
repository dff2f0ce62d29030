"""An S3 prefix ``s3://bucket/prefix`` read through boto3, with an optional ``metadata.csv`` at the prefix.

Connection settings come from the environment, as for the AWS CLI: the endpoint from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, moto, Ceph, ...), the region from AWS_REGION /
AWS_DEFAULT_REGION / the profile, credentials from AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY,
AWS_PROFILE or an instance role. Credentials are never logged: messages name the bucket, key and
S3 error code only.

Keys below the prefix are the records' ``source_path`` (the manifest's ``image_key`` is their HMAC) (rules of metadata: sslflow/data/metadata.py).
Any key with a '..' part is refused, since it could escape the prefix when mirrored to disk, and so
is a metadata path that names no object under the prefix, and so is a case variant of metadata.csv
(``Metadata.csv``) at the prefix. The fingerprint (sslflow/data/fingerprint.py) hashes the listing
(keys, ETags, sizes), so deciding whether ingest's cache is still valid downloads nothing; unchanged
objects are not downloaded again either (sslflow/data/decode_cache.py remembers key + ETag + size).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from sslflow.data.dicom import PREAMBLE_BYTES, has_dicom_preamble
from sslflow.data.metadata import METADATA_FILE, ImageRecord, check_relative_path, instance_rows, keyed_by_instance, metadata_file_name, metadata_rows, parse_metadata_csv
from sslflow.data.types import DICOM_SUFFIXES, IMAGE_SUFFIXES, SourceError


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix is "" or ends in '/'."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise SourceError(f"{uri!r} is not an S3 source; expected s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    """A boto3 S3 client configured from the environment (see the module docstring)."""
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=config)


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Turn boto errors into SourceErrors that say what was being done (never with credentials)."""
    try:
        yield
    except ClientError as error:
        details = error.response.get("Error", {})
        raise SourceError(f"{what}: S3 error {details.get('Code', '?')} ({details.get('Message', '')})") from error
    except NoCredentialsError as error:
        raise SourceError(f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from error
    except BotoCoreError as error:
        raise SourceError(f"{what}: {type(error).__name__}: {error} (endpoint {endpoint_url() or 'AWS default'})") from error


def list_objects(client, bucket: str, prefix: str) -> list[dict]:
    """Every object under the prefix as {"Key", "ETag", "Size"}, in key order; folder markers skipped."""
    objects = []
    with s3_errors(f"listing s3://{bucket}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects.extend(page.get("Contents", []))
    return sorted((item for item in objects if not item["Key"].endswith("/")), key=lambda item: item["Key"])


def objects_by_path(objects: list[dict], bucket: str, prefix: str) -> dict[str, dict]:
    """{path relative to the prefix: object}; SourceError for a key that is absolute or has '..' below the prefix."""
    return {check_relative_path(item["Key"][len(prefix) :], f"s3://{bucket}/{item['Key']}"): item for item in objects}


def prefix_metadata_file(objects: dict[str, dict], bucket: str, prefix: str) -> str | None:
    """METADATA_FILE when the prefix holds one; SourceError for a case variant such as Metadata.csv."""
    return metadata_file_name({path for path in objects if "/" not in path}, f"s3://{bucket}/{prefix}")


def read_object(client, bucket: str, key: str) -> bytes:
    with s3_errors(f"reading s3://{bucket}/{key}"):
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_object_start(client, bucket: str, item: dict) -> bytes:
    """The first PREAMBLE_BYTES bytes of an object (a ranged GET), to recognise DICOM without a suffix."""
    if int(item["Size"]) < PREAMBLE_BYTES:
        return b""
    with s3_errors(f"reading s3://{bucket}/{item['Key']}"):
        return client.get_object(Bucket=bucket, Key=item["Key"], Range=f"bytes=0-{PREAMBLE_BYTES - 1}")["Body"].read()


def list_s3(client, uri: str) -> list[ImageRecord]:
    """The images under an S3 prefix: the rows of its metadata.csv, or else every key with an image or DICOM
    suffix, and every other object whose first bytes are a DICOM preamble (one ranged GET each)."""
    bucket, prefix = parse_s3_uri(uri)
    objects = objects_by_path(list_objects(client, bucket, prefix), bucket, prefix)
    table = _metadata_table(client, objects, bucket, prefix)
    if table is not None and not keyed_by_instance(table):
        where = f"s3://{bucket}/{prefix}{METADATA_FILE}"
        rows = metadata_rows(table, where, first_row=2)
        for row in rows:
            if row["path"] not in objects:
                raise SourceError(f"{row['where']}: {row['path']!r} does not exist under s3://{bucket}/{prefix}")
    else:
        rows = [
            {"path": path, "case_id": None, "site": "default", "label": None}
            for path in objects
            if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
            or (path != METADATA_FILE and has_dicom_preamble(read_object_start(client, bucket, objects[path])))
        ]
    records = []
    for row in rows:
        item = objects[row["path"]]
        location = f"s3://{bucket}/{item['Key']}"
        records.append(
            ImageRecord(
                source_path=row["path"], location=location, size_bytes=int(item["Size"]),
                case_id=row["case_id"], site=row["site"], label=row["label"],
                version_key=f"{endpoint_url() or 'aws'} {location} {item['ETag']} {item['Size']}",
            )  # fmt: skip
        )
    return records


def _metadata_table(client, objects: dict[str, dict], bucket: str, prefix: str):
    """The prefix's metadata.csv as a table, or None."""
    if not prefix_metadata_file(objects, bucket, prefix):
        return None
    where = f"s3://{bucket}/{prefix}{METADATA_FILE}"
    return parse_metadata_csv(read_object(client, bucket, objects[METADATA_FILE]["Key"]), where)


def s3_instance_rows(client, uri: str) -> list[dict] | None:
    """The rows of the prefix's metadata.csv when it names DICOM files by SOPInstanceUID, else None."""
    bucket, prefix = parse_s3_uri(uri)
    table = _metadata_table(client, objects_by_path(list_objects(client, bucket, prefix), bucket, prefix), bucket, prefix)
    return instance_rows(table, f"s3://{bucket}/{prefix}{METADATA_FILE}", first_row=2) if table is not None and keyed_by_instance(table) else None
