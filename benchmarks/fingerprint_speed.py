"""Fingerprint speed: the time Flyte's cache key of ingest takes on a folder of many files, cold and warm.

Creates N files of 64 bytes named *.png (fingerprinting lists, stats and hashes files; it never
decodes them) in 1,000-file subfolders of a temporary folder, dated an hour back as a data set's
files usually are (the digest cache does not trust a file modified in the 2 s before it is hashed).
Then fingerprints the folder twice, each time in a fresh process, as each Flyte task that takes the
source does:
- cold: an empty digest cache, so every file is read and hashed;
- warm: the digest cache the cold run left, so files are listed and stat-ed but none is read.
The files are in the page cache both times: "cold" means a cold digest cache, not a cold disk.
For reference, the time to read and sha256 every file once in this process (what the previous
fingerprint did in every task, without any checks). Seconds exclude the child's Python start and
imports. With 64-byte files the time goes to listing and checking, which ingest does too; so the
same is measured on fewer, image-sized files (1 MiB), where reading is what the digest cache saves.

    python benchmarks/fingerprint_speed.py            # N = 100,000 (target: warm under 10 s on 2 cores); 1,000 x 1 MiB
    python benchmarks/fingerprint_speed.py --quick    # N = 2,000; 50 x 1 MiB
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FILES_PER_FOLDER = 1000

# Runs in a fresh process: one fingerprint, timed, counting the files whose bytes were read.
CHILD = """
import json, sys, time
import sslflow.data.fingerprint as fingerprint
from sslflow.data.sources import fingerprint_source
hash_file, files_read = fingerprint.sha256_of_regular_file, []
def counting(*args):
    files_read.append(args[0])
    return hash_file(*args)
fingerprint.sha256_of_regular_file = counting
started = time.perf_counter()
value = fingerprint_source(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "fingerprint": value, "files_read": len(files_read)}))
"""


def write_files(root: Path, count: int, size: int) -> None:
    """``count`` distinct files of ``size`` bytes root/caseNNN/imgNNNNNN.png, modified an hour ago."""
    an_hour_ago = time.time() - 3600
    for index in range(count):
        path = root / f"case{index // FILES_PER_FOLDER:03d}" / f"img{index:06d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes((hashlib.sha256(str(index).encode()).digest() * (size // 32 + 1))[:size])
        os.utime(path, (an_hour_ago, an_hour_ago))


def fingerprint_in_fresh_process(folder: Path, cache: Path) -> dict:
    """{"seconds", "fingerprint", "files_read"} of one fingerprint of ``folder`` with digest cache ``cache``."""
    environment = {**os.environ, "SSLFLOW_INGEST_CACHE": str(cache), "PYTHONPATH": str(PROJECT_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=3600,
    )
    if completed.returncode != 0:
        raise SystemExit(f"fingerprinting {folder} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def read_every_byte(folder: Path) -> float:
    """Seconds to read and sha256 every file under ``folder`` once, in sorted order."""
    started = time.perf_counter()
    for path in sorted(folder.rglob("*.png")):
        hashlib.sha256(path.read_bytes())
    return time.perf_counter() - started


def measure(count: int, size: int) -> dict:
    """Cold and warm fingerprints (fresh processes) of ``count`` files of ``size`` bytes, and the reference."""
    with tempfile.TemporaryDirectory(prefix="fingerprint-speed-") as scratch:
        folder, cache = Path(scratch) / "scans", Path(scratch) / "ingest-cache"
        folder.mkdir()
        started = time.perf_counter()
        write_files(folder, count, size)
        print(f"{count} files of {size} bytes written in {time.perf_counter() - started:.1f} s")
        runs = {name: fingerprint_in_fresh_process(folder, cache) for name in ("cold", "warm")}
        reference = read_every_byte(folder)
    for name, run in runs.items():
        run["files_per_second"] = count / run["seconds"]
        print(
            f"  {name}: {run['seconds']:.2f} s, {run['files_per_second']:,.0f} files/s, {run['files_read']} files read"
        )
    print(f"  reference, reading and hashing every file once: {reference:.2f} s")
    return {
        "files": count,
        "file_bytes": size,
        "cold": runs["cold"],
        "warm": runs["warm"],
        "same_fingerprint": runs["cold"]["fingerprint"] == runs["warm"]["fingerprint"],
        "read_every_byte_seconds": reference,
    }


def main() -> None:
    args = parse_arguments(__doc__)
    small = measure(2000 if args.quick else 100_000, 64)
    large = measure(50 if args.quick else 1000, 1 << 20)
    payload = {"processes": "a fresh process per fingerprint", **small, "large_files": large}
    print(f"saved {write_result('fingerprint_speed' + ('-quick' if args.quick else ''), payload, args.out)}")


if __name__ == "__main__":
    main()
