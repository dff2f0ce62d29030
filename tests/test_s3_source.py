"""S3 sources against a real S3 server process (moto_server on 127.0.0.1), reached through AWS_ENDPOINT_URL."""

import io
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from ingested import image_keys, ingest, labels
from moto_s3 import moto_s3_server, s3_environment
from PIL import Image

from sslflow.config import IngestConfig
from sslflow.data.sources import fingerprint_source
from sslflow.data.types import SourceError, UndecodableImageError
from workflows.data import validate_data

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "sslflow-scans"
CONFIG = IngestConfig(image_size=16)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server process for this module, with the environment pointing boto3 at it; always stopped."""
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as endpoint, pytest.MonkeyPatch.context() as environment:
        s3_environment(environment, endpoint)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _png(seed: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (20 + seed % 7, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _put(client, key: str, body: bytes) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body)


def test_ingest_an_s3_prefix_with_metadata(s3_server):
    for i in range(6):
        _put(s3_server, f"clinic/scans/img{i}.png", _png(i, "L" if i % 2 else "RGB"))
    _put(
        s3_server,
        "clinic/scans/metadata.csv",
        b"path,case_id,site,label\n" + b"".join(f"img{i}.png,p{i // 2},s{i % 2},{i % 2}\n".encode() for i in range(6)),
    )
    _put(s3_server, "clinic/scans2/other.png", _png(40))  # a sibling prefix: not part of the source
    manifest, pixels, _ = ingest(f"s3://{BUCKET}/clinic/scans", CONFIG)
    assert manifest["image_key"].tolist() == image_keys([f"img{i}.png" for i in range(6)])
    assert pixels.shape == (6, 1, 16, 16) and manifest["case_id"].tolist() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert labels(manifest) == ["0", "1"] * 3 and manifest["site"].tolist() == ["s0", "s1"] * 3
    assert manifest["size_bytes"][0] == len(_png(0))
    summary = validate_data(source=f"s3://{BUCKET}/clinic/scans")
    assert "is valid: 6 images, 3 cases" in summary


def test_incremental_ingest_downloads_and_decodes_only_new_objects(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "cache"))
    source = f"s3://{BUCKET}/incremental"
    for i in range(3):
        _put(s3_server, f"incremental/img{i}.png", _png(10 + i))
    first_fingerprint = fingerprint_source(source)
    first, first_pixels, summary = ingest(source, CONFIG)
    assert summary["read"] == {
        "listed": 3,
        "decoded": 3,
        "decode_cache_hits": 0,
        "files_read": 3,
        "bytes_read": sum(first["size_bytes"]),
    }
    _put(s3_server, "incremental/img3.png", _png(13))
    assert fingerprint_source(source) != first_fingerprint  # so Flyte's cache runs ingest again
    _, second_pixels, summary = ingest(source, CONFIG)
    assert summary["read"] == {
        "listed": 4,
        "decoded": 1,
        "decode_cache_hits": 3,
        "files_read": 1,
        "bytes_read": len(_png(13)),
    }
    assert np.array_equal(second_pixels[:3], first_pixels)
    _put(s3_server, "incremental/img0.png", _png(20))  # replaced object: new ETag, downloaded and decoded again
    assert ingest(source, CONFIG)[2]["read"]["decoded"] == 1


def test_an_undecodable_object_is_named_or_quarantined(s3_server):
    for i in range(3):
        _put(s3_server, f"broken/img{i}.png", _png(30 + i))
    _put(s3_server, "broken/scan7.png", b"<Error>AccessDenied</Error>")
    with pytest.raises(
        UndecodableImageError, match=rf"s3://{BUCKET}/broken/scan7.png: not a PNG, JPEG, TIFF, BMP image"
    ):
        ingest(f"s3://{BUCKET}/broken", CONFIG)
    manifest, _, summary = ingest(f"s3://{BUCKET}/broken", IngestConfig(image_size=16, max_bad_fraction=0.25))
    assert len(manifest) == 3 and summary["quarantined"][0]["image_key"] == image_keys(["scan7.png"])[0]


def test_keys_with_dotdot_are_refused(s3_server):
    _put(s3_server, "escape/img0.png", _png(1))
    _put(s3_server, "escape/sub/../../etc/passwd.png", _png(2))
    with pytest.raises(SourceError, match=rf"s3://{BUCKET}/escape/sub/../../etc/passwd.png: .* contains '..'"):
        ingest(f"s3://{BUCKET}/escape", CONFIG)


def test_metadata_naming_a_missing_object_and_a_missing_bucket(s3_server):
    _put(s3_server, "listed/img0.png", _png(3))
    _put(s3_server, "listed/metadata.csv", b"path,case_id\nimg0.png,a\nimg1.png,b\n")
    with pytest.raises(
        SourceError, match=rf"s3://{BUCKET}/listed/metadata.csv row 3, column 'path': 'img1.png' does not exist"
    ):
        ingest(f"s3://{BUCKET}/listed", CONFIG)
    with pytest.raises(
        SourceError, match=r"(listing|reading) s3://no-such-bucket/x/(metadata.csv)?: S3 error NoSuchBucket"
    ):
        ingest("s3://no-such-bucket/x", CONFIG)
    with pytest.raises(SourceError, match=r"source s3://sslflow-scans/nothing-here is empty"):
        ingest(f"s3://{BUCKET}/nothing-here", CONFIG)


def test_pyflyte_validate_data_on_an_s3_prefix(s3_server):
    for i in range(4):
        _put(s3_server, f"cli/img{i}.png", _png(60 + i))
    command = [
        str(Path(sys.executable).parent / "pyflyte"),
        "run",
        "workflows/data.py",
        "validate_data",
        "--source",
        f"s3://{BUCKET}/cli",
    ]
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid: 4 images" in result.stdout
    assert "testing" not in result.stdout + result.stderr  # credentials are never printed
