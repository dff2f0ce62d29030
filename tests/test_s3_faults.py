"""S3 under load: transient errors (503 SlowDown, connection resets) are retried, and ingest gives the same dataset.

A proxy in front of the moto server (tests/faulty_proxy.py) fails every 5th request with SlowDown and resets
the connection of every 7th; ingesting the S3 source through it gives the dataset hash of a run without faults.
"""

from __future__ import annotations

import boto3
import numpy as np
from faulty_proxy import FaultyS3Proxy
from moto_s3 import moto_s3_server, s3_environment
from PIL import Image

from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.sources import fingerprint_source

CONFIG = IngestConfig(image_size=8, chunk_images=8, shard_megabytes=1)


def _upload_scans(count: int, folder) -> None:
    client = boto3.client("s3")
    client.create_bucket(Bucket="scans")
    rows = []
    for i in range(count):
        path = folder / f"faulty-{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
        client.upload_file(str(path), "scans", f"site/img{i:03d}.png")
        rows.append(f"img{i:03d}.png,case{i // 2},default,{i % 2}")
    client.put_object(
        Bucket="scans", Key="site/metadata.csv", Body=("path,case_id,site,label\n" + "\n".join(rows) + "\n").encode()
    )


def test_ingest_through_failing_s3_requests_gives_the_same_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")  # every object is downloaded in both runs
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        _upload_scans(30, tmp_path)
        expected, _, _ = ingest_source("s3://scans/site", CONFIG, tmp_path / "direct")
        fingerprint = fingerprint_source("s3://scans/site")
        with FaultyS3Proxy(endpoint, slow_down_every=5, reset_every=7) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
            assert fingerprint_source("s3://scans/site") == fingerprint
            observed, _, _ = ingest_source("s3://scans/site", CONFIG, tmp_path / "through-faults")
    assert observed == expected
    assert proxy.injected["slow_down"] > 3 and proxy.injected["reset"] > 3, proxy.injected
