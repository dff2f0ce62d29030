"""A test process that read S3 through flytekit exits without reporting S3 sessions left open
(which, at interpreter shutdown, rich's logging turned into "ImportError: sys.meta_path is None")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from pathlib import Path

import boto3
from flytekit.configuration import DataConfig, S3Config
from flytekit.core.data_persistence import FileAccessProvider

from moto_s3 import moto_s3_server

folder = Path(sys.argv[1])
with moto_s3_server(folder) as endpoint:
    credentials = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    bucket = boto3.client("s3", endpoint_url=endpoint, **credentials)
    bucket.create_bucket(Bucket="datasets")
    bucket.put_object(Bucket="datasets", Key="manifest.parquet", Body=b"rows")
    s3 = S3Config(endpoint=endpoint, access_key_id="testing", secret_access_key="testing")
    access = FileAccessProvider(str(folder / "sandbox"), "s3://datasets/raw", DataConfig(s3=s3))
    access.get_data("s3://datasets/manifest.parquet", str(folder / "manifest.parquet"))
assert (folder / "manifest.parquet").read_bytes() == b"rows"
"""


def test_reading_s3_through_flytekit_leaves_no_session_open_at_exit(tmp_path):
    tests = Path(__file__).resolve().parent
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tests, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Unclosed client session" not in completed.stderr and "meta_path is None" not in completed.stderr, (
        completed.stderr[-3000:]
    )
