"""The fingerprint (Flyte's cache key of ingest) changes exactly when what ingest reads does, never opens
a special file or a file outside the source, and re-reads only changed files. Issue: "Caching and
refusals a user can trust"."""

import builtins
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from ingested import ingest, labels
from moto_s3 import moto_s3_server, s3_environment
from PIL import Image

import sslflow
from sslflow.config import IngestConfig
from sslflow.data.sources import fingerprint_source
from sslflow.data.types import SourceError

# The project whose sslflow is imported (a worktree of an older commit when PYTHONPATH points there).
PROJECT_ROOT = Path(sslflow.__file__).resolve().parents[1]
CONFIG = IngestConfig(image_size=16)
AN_HOUR_AGO = time.time() - 3600


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes, *, old: bool = True) -> Path:
    """Write ``data``; old: date the file an hour back, as a data set's files usually are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if old:
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


class _Blocked(BaseException):
    """Raised by the alarm: a BaseException, so no `except OSError` in the code under test can swallow it."""


@contextmanager
def _within(seconds: float):
    """Fail instead of hanging when the code inside blocks (opening a FIFO nobody writes to blocks forever)."""

    def expire(signum, frame):
        raise _Blocked()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Blocked:
        pytest.fail(f"blocked for more than {seconds} s: a special file was opened")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every path opened through open(), io.open() or os.open() while the test runs, resolved."""
    paths: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def spy(real):
        def opener(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                paths.append(os.path.realpath(os.fsdecode(file)))
            return real(file, *args, **kwargs)

        return opener

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    monkeypatch.setattr(os, "open", spy(real_os_open))
    return paths


@pytest.fixture(autouse=True)
def _own_digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "ingest-cache"))


def test_a_png_and_a_pn_holding_g_plus_its_bytes_differ(tmp_path):
    data = _png(0)
    _write(tmp_path / "one" / "a.png", data)
    _write(tmp_path / "two" / "a.pn", b"g" + data)
    # The same source string (the folder's content replaced), as in the stale cache hit of the issue.
    first = fingerprint_source(str(tmp_path / "one"))
    (tmp_path / "one").rename(tmp_path / "old")
    (tmp_path / "two").rename(tmp_path / "one")
    assert fingerprint_source(str(tmp_path / "one")) != first
    with pytest.raises(SourceError, match=r"source .*one is empty"):
        ingest(tmp_path / "one", CONFIG)


def test_files_ingest_does_not_read_do_not_change_the_fingerprint(tmp_path):
    _write(tmp_path / "img0.png", _png(0))
    before = fingerprint_source(str(tmp_path))
    _write(tmp_path / "notes.txt", b"not an image")
    assert fingerprint_source(str(tmp_path)) == before
    _write(tmp_path / "img1.png", _png(1))
    assert fingerprint_source(str(tmp_path)) != before


def _fifo_named_png(root: Path) -> str:
    os.mkfifo(root / "x.png")
    return "x.png"


def _symlink_to_a_fifo(root: Path) -> str:
    os.mkfifo(root / "queue")
    (root / "x.png").symlink_to(root / "queue")
    return "x.png"


def _metadata_lists_a_fifo(root: Path) -> str:
    os.mkfifo(root / "scan.png")
    _write(root / "metadata.csv", b"path,label\nimg0.png,a\nscan.png,b\n")
    return "scan.png"


def _metadata_csv_is_a_fifo(root: Path) -> str:
    os.mkfifo(root / "metadata.csv")
    return "metadata.csv"


@pytest.mark.parametrize(
    "build", [_fifo_named_png, _symlink_to_a_fifo, _metadata_lists_a_fifo, _metadata_csv_is_a_fifo]
)
def test_a_fifo_is_refused_by_name_without_being_opened(tmp_path, build):
    root = tmp_path / "scans"
    _write(root / "img0.png", _png(0))
    name = build(root)
    for compute in (fingerprint_source, lambda source: ingest(source, CONFIG)):
        with _within(3), pytest.raises(SourceError, match=rf"{name}'? is not a regular file but a FIFO"):
            compute(str(root))


@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_a_symlink_out_of_the_source_is_refused_without_being_opened(tmp_path, opened, kind):
    secret = _write(tmp_path / "outside" / "secret.png", _png(9))
    root = tmp_path / "scans"
    _write(root / "img0.png", _png(0))
    (root / "link.png").symlink_to(secret)
    source = root
    if kind == "parquet":
        source = root / "cohort.parquet"
        pd.DataFrame({"path": ["img0.png", "link.png"]}).to_parquet(source)
    opened.clear()
    with pytest.raises(SourceError, match=r"'link.png' resolves outside the source folder"):
        fingerprint_source(str(source))
    assert str(secret) not in opened


def test_a_parquet_lists_fingerprint_covers_the_list_and_its_files_only(tmp_path):
    for i in range(3):
        _write(tmp_path / f"img{i}.png", _png(i))
    image_list = tmp_path / "cohort.parquet"
    pd.DataFrame({"path": ["img0.png", "img1.png"], "label": ["a", "b"]}).to_parquet(image_list)
    before = fingerprint_source(str(image_list))
    _write(tmp_path / "mlflow.db", b"an unrelated file beside the list")
    _write(tmp_path / "img2.png", _png(20))  # in the folder, but not listed
    assert fingerprint_source(str(image_list)) == before
    _write(tmp_path / "img1.png", _png(21))
    changed_file = fingerprint_source(str(image_list))
    assert changed_file != before
    pd.DataFrame({"path": ["img0.png", "img1.png"], "label": ["a", "c"]}).to_parquet(image_list)
    assert fingerprint_source(str(image_list)) != changed_file


def _opened_under(opened: list[str], root: Path) -> list[str]:
    return sorted(Path(path).name for path in opened if Path(path).is_relative_to(root.resolve()))


@pytest.mark.parametrize("with_metadata", [False, True])
def test_an_unchanged_folder_is_fingerprinted_without_reading_its_files(tmp_path, opened, with_metadata):
    root = tmp_path / "scans"
    for i in range(20):
        _write(root / f"img{i:02d}.png", _png(i))
    if with_metadata:
        _write(root / "metadata.csv", ("path,label\n" + "".join(f"img{i:02d}.png,x\n" for i in range(20))).encode())
    first = fingerprint_source(str(root))
    opened.clear()
    assert fingerprint_source(str(root)) == first
    assert _opened_under(opened, root) == (["metadata.csv"] if with_metadata else [])  # listing it reads the metadata
    _write(root / "img07.png", _png(107))  # new bytes, new mtime (an hour ago, a second later)
    os.utime(root / "img07.png", (AN_HOUR_AGO + 1, AN_HOUR_AGO + 1))
    opened.clear()
    assert fingerprint_source(str(root)) != first
    assert _opened_under(opened, root) == (["img07.png", "metadata.csv"] if with_metadata else ["img07.png"])


def test_files_hashed_by_several_threads_keep_their_order_and_digests(tmp_path, monkeypatch):
    """FileDigests.records hashes batches of files on threads: every digest is that file's, in listing order, and
    is remembered for the next call."""
    import hashlib

    from sslflow.data import fingerprint

    monkeypatch.setattr(fingerprint, "HASH_BATCH", 3)  # several batches on the two threads
    monkeypatch.setattr(fingerprint, "HASH_THREADS", 2)
    files = [_write(tmp_path / f"img{i:02d}.png", _png(i)) for i in range(20)]
    expected = [[path.name, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()] for path in files]
    with fingerprint.FileDigests(tmp_path / "digests.sqlite") as digests:
        assert digests.records([(path.name, path, str(path)) for path in reversed(files)]) == expected[::-1]
    with fingerprint.FileDigests(tmp_path / "digests.sqlite") as digests:
        assert [
            digests._remembered(fingerprint.path_key(path), fingerprint._version(path.stat())) for path in files
        ] == [row[2] for row in expected]
    assert not any(
        path.name.encode() in (tmp_path / "digests.sqlite").read_bytes() for path in files
    )  # paths are never stored


def test_a_recently_modified_file_is_read_again(tmp_path, opened):
    """A same-size rewrite in place that keeps the mtime (as one within a coarse timestamp tick would) is seen."""
    _write(tmp_path / "img0.png", _png(0), old=False)
    first = fingerprint_source(str(tmp_path))
    status = os.stat(tmp_path / "img0.png")
    with open(tmp_path / "img0.png", "r+b") as handle:  # same inode, same size, then the same mtime
        handle.write(b"\x00")
    os.utime(tmp_path / "img0.png", ns=(status.st_atime_ns, status.st_mtime_ns))
    assert fingerprint_source(str(tmp_path)) != first


def test_a_broken_digest_cache_does_not_fail_the_fingerprint(tmp_path, monkeypatch):
    _write(tmp_path / "scans" / "img0.png", _png(0))
    expected = fingerprint_source(str(tmp_path / "scans"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "file-digests.sqlite").write_bytes(b"this is not a sqlite database" * 100)
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "broken"))
    assert fingerprint_source(str(tmp_path / "scans")) == expected
    (tmp_path / "a-file").write_bytes(b"")
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "a-file" / "cache"))  # cannot even be created
    assert fingerprint_source(str(tmp_path / "scans")) == expected


def test_concurrent_processes_share_the_digest_cache(tmp_path):
    root = tmp_path / "scans"
    for i in range(300):
        _write(root / f"img{i:03d}.png", _png(i % 7) + bytes([i % 256]))
    code = "import sys; from sslflow.data.sources import fingerprint_source; print(fingerprint_source(sys.argv[1]))"
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for _ in range(4)
    ]
    results = [worker.communicate(timeout=300) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [stderr[-2000:] for _, stderr in results]
    assert len({stdout.strip() for stdout, _ in results}) == 1
    assert fingerprint_source(str(root)) == results[0][0].strip()


def test_an_empty_listing_has_a_fingerprint_and_ingest_says_empty(tmp_path):
    _write(tmp_path / "README.txt", b"scans go here\n")
    assert len(fingerprint_source(str(tmp_path))) == 64
    with pytest.raises(SourceError, match=r"source .* is empty"):
        ingest(tmp_path, CONFIG)


def test_builtin_fingerprints_are_stable_and_distinct():
    assert fingerprint_source("mnist-5k") == fingerprint_source("mnist-5k") != fingerprint_source("optdigits")


@pytest.mark.parametrize("variant", ["Metadata.csv", "METADATA.CSV"])
def test_a_case_variant_of_metadata_csv_in_a_folder_is_refused(tmp_path, variant):
    _write(tmp_path / "img0.png", _png(0))
    _write(tmp_path / variant, b"path,label\nimg0.png,a\n")
    for compute in (fingerprint_source, lambda source: ingest(source, CONFIG)):
        with pytest.raises(SourceError, match=rf"found '{variant}'.*rename it to metadata.csv"):
            compute(str(tmp_path))
    _write(tmp_path / "metadata.csv", b"path,label\nimg0.png,b\n")
    with pytest.raises(
        SourceError, match=rf"metadata.csv and {variant} found; which one holds the metadata is ambiguous"
    ):
        ingest(tmp_path, CONFIG)


@pytest.fixture
def s3_client(tmp_path, monkeypatch):
    """A moto S3 server process on 127.0.0.1 (tests/moto_s3.py) and a client with a bucket."""
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        client = boto3.client("s3")
        client.create_bucket(Bucket="scans")
        yield client


def test_a_case_variant_of_metadata_csv_at_an_s3_prefix_is_refused(s3_client):
    s3_client.put_object(Bucket="scans", Key="clinic/img0.png", Body=_png(0))
    s3_client.put_object(Bucket="scans", Key="clinic/Metadata.csv", Body=b"path,label\nimg0.png,a\n")
    for compute in (fingerprint_source, lambda source: ingest(source, CONFIG)):
        with pytest.raises(SourceError, match=r"s3://scans/clinic/: found 'Metadata.csv'.*rename it to metadata.csv"):
            compute("s3://scans/clinic")
    s3_client.put_object(Bucket="scans", Key="clinic/metadata.csv", Body=b"path,label\nimg0.png,a\n")
    with pytest.raises(
        SourceError, match=r"s3://scans/clinic/: metadata.csv and Metadata.csv found; which one .* is ambiguous"
    ):
        ingest("s3://scans/clinic", CONFIG)
    s3_client.delete_object(Bucket="scans", Key="clinic/Metadata.csv")
    assert labels(ingest("s3://scans/clinic", CONFIG)[0]) == ["a"]
    before = fingerprint_source("s3://scans/clinic")
    s3_client.put_object(Bucket="scans", Key="clinic/img0.png", Body=_png(1))
    assert fingerprint_source("s3://scans/clinic") != before


def _pyflyte_validate_data(source: Path) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "pyflyte"),
        "run",
        "workflows/data.py",
        "validate_data",
        "--source",
        str(source),
    ]
    environment = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=environment)


def test_pyflyte_validate_data_refuses_a_png_renamed_to_pn(tmp_path):
    """The issue's stale cache hit, as a user runs it: the second run must not print the old dataset."""
    folder = tmp_path / "scans"
    data = _png(0)
    _write(folder / "a.png", data)
    first = _pyflyte_validate_data(folder)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "is valid: 1 images" in first.stdout
    (folder / "a.png").unlink()
    _write(folder / "a.pn", b"g" + data)
    second = _pyflyte_validate_data(folder)
    output = second.stdout + second.stderr
    assert second.returncode != 0, output[-3000:]
    assert "valid: 1 images" not in output
    assert f"source {folder} is empty" in output


def test_fingerprint_benchmark_quick_run_writes_its_result(tmp_path):
    command = [sys.executable, "benchmarks/fingerprint_speed.py", "--quick", "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    (result,) = tmp_path.glob("fingerprint_speed-quick-*.json")
    record = json.loads(result.read_text())
    assert record["command"].endswith("--quick --out " + str(tmp_path)) and record["machine"]["cpu_count"]
    assert record["machine"]["commit"] and isinstance(record["machine"]["dirty"], bool) and record["date"]
    assert record["files"] == 2000 and record["same_fingerprint"]
    assert record["cold"]["seconds"] > 0 and record["warm"]["seconds"] > 0 and record["warm"]["files_per_second"] > 0
    assert record["warm"]["files_read"] == 0 and record["cold"]["files_read"] == 2000


def test_an_s3_fingerprint_is_hashed_as_the_listing_streams(monkeypatch):
    """The fingerprint task of a 10^6-object prefix holds one listing page, not a list of every object: the digest is
    encode_fingerprint's, computed from the listing as a generator."""
    from sslflow.data.fingerprint import encode_fingerprint
    from sslflow.data.sources import s3 as s3_source

    entries = []

    class Pages:
        def get_paginator(self, operation):
            return self

        def paginate(self, Bucket, Prefix):
            for page in range(3):
                keys = [
                    {"Key": f"{Prefix}p{page}/img{i:03d}.png", "ETag": f'"{page}-{i}"', "Size": 10 + i}
                    for i in range(1000)
                ]
                entries.extend([item["Key"][len(Prefix) :], item["Size"], item["ETag"]] for item in keys)
                yield {"Contents": keys}

    monkeypatch.setattr(s3_source, "s3_client", lambda **settings: Pages())
    streamed = []
    original = s3_source.encode_sorted_fingerprint
    monkeypatch.setattr(
        s3_source, "encode_sorted_fingerprint", lambda *args: streamed.append(type(args[3]).__name__) or original(*args)
    )
    fingerprint = fingerprint_source("s3://scans/clinic")
    assert fingerprint == encode_fingerprint("s3", "s3://scans/clinic", None, entries) and streamed == ["generator"]
    with pytest.raises(ValueError, match="not sorted by name"):
        original("s3", "s3://scans/clinic", None, iter([["b", 1, "x"], ["a", 1, "y"]]))
