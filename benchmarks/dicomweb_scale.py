"""A DICOMweb archive at scale: N small synthetic CT instances in a local Orthanc (tests/orthanc.py), ingested by
the functions the Flyte ingest tasks run, each step in a process of its own (as each task is a pod of its own)
whose peak resident set is sampled from /proc.

For each N (four instances per patient, one study and series each, 32 x 32 pixels: benchmarks/cluster_scale.py's
``dicom_bytes``), stored by STOW-RS, with basic-auth credentials as a user sets them:

- fingerprint: ``fingerprint_source`` (the cache key: tasks/ingest.py source_fingerprint, the run's first task), QIDO-RS
  only;
- plan: ``plan_to_files`` (tasks/ingest.plan_ingest's work: the QIDO-RS listing, sorted on disk, cut into chunks);
- chunk: ``decode_chunk`` of the CHUNKS_TIMED largest chunks, one after another, each in a process of its own (a
  chunk pod): images per second through WADO-RS, retrieval, decoding and shard writing included.
Requests are counted by a proxy in front of Orthanc that forwards everything (tests/faulty_proxy.py, no faults):
the fingerprint and the plan go through it, and one more chunk (not timed) for the WADO-RS requests per image.

    python benchmarks/dicomweb_scale.py                   # N = 1,000 and 10,000
    python benchmarks/dicomweb_scale.py --sizes 200       # a quick look

Targets (the DICOMweb source): launcher (fingerprint) and plan peak RSS at N = 10,000 <= 1.25 x at N = 1,000;
images per second per chunk pod and requests per image (the plan's QIDO-RS per instance + a chunk's WADO-RS per
image; the fingerprint's QIDO-RS, as many again, is made where the run is launched) reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cluster_scale import dicom_bytes
from benchmarks.data_scale import run_measured

IMAGE_SIZE = 64
CHUNK_IMAGES = 512
CHUNKS_TIMED = 2
PSEUDONYM_KEY = "dicomweb-scale-benchmark-key"
USER, PASSWORD = "benchmark-reader", "benchmark-password-0123456789"
STOW_BATCH = 100


def _config():
    from sslflow.config import IngestConfig

    return IngestConfig(image_size=IMAGE_SIZE, chunk_images=CHUNK_IMAGES)


def child_fingerprint(source: str) -> dict:
    from sslflow.data.sources import fingerprint_source

    return {"fingerprint": fingerprint_source(source)}


def child_plan(source: str, plan_folder: str) -> dict:
    from sslflow.data.chunks import plan_to_files

    paths = plan_to_files(source, _config(), Path(plan_folder))
    return {"chunks": len(paths), "chunk_file_bytes_largest": max(path.stat().st_size for path in paths)}


def child_chunk(document: str, folder: str) -> dict:
    """decode_chunk of one chunk document: its images and the seconds the call took."""
    from sslflow.data.chunks import CHUNK_REPORT, decode_chunk

    started = time.perf_counter()
    decode_chunk(Path(document).read_text(), Path(folder), pseudonym_key=PSEUDONYM_KEY)
    seconds = time.perf_counter() - started
    return {"images": json.loads((Path(folder) / CHUNK_REPORT).read_text())["images"], "seconds": seconds}


def run_child(arguments: list[str]) -> tuple[dict, float, float]:
    """This script with ``arguments`` in a child process: (its JSON result, wall seconds, peak tree RSS MiB)."""
    result, seconds, rss, _ = run_measured(arguments, dict(os.environ), script=Path(__file__))
    return result, seconds, rss


def store(archive, count: int, folder: Path) -> float:
    """STOW-RS ``count`` synthetic instances, STOW_BATCH per request (straight to Orthanc, not counted); the seconds."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, STOW_BATCH):
        paths = []
        for index in range(start, min(count, start + STOW_BATCH)):
            path = folder / f"{index}.dcm"
            path.write_bytes(dicom_bytes(index))
            paths.append(path)
        archive.store(paths)
        for path in paths:
            path.unlink()
    return time.perf_counter() - started


def _request_kinds(requests: list[tuple[str, str]]) -> dict[str, int]:
    """Requests by kind: QIDO-RS studies / series / instances searches, WADO-RS instance retrievals."""
    kinds = Counter()
    for _, path in requests:
        route = path.split("?")[0].rstrip("/").split("/")
        kinds["WADO-RS instance" if "?" not in path and len(route) >= 8 else f"QIDO-RS {route[-1]}"] += 1
    return dict(sorted(kinds.items()))


def _timed_chunks(documents: list[Path], work: Path) -> dict:
    """The CHUNKS_TIMED largest chunks, each in a process of its own: images per second and peak RSS."""
    timed = [
        run_child(["chunk", str(document), str(work / f"chunk-{index}")])
        for index, document in enumerate(documents[:CHUNKS_TIMED])
    ]
    rates = [result["images"] / result["seconds"] for result, _, _ in timed]
    return {
        "images": [result["images"] for result, _, _ in timed],
        "images_per_second": [round(rate, 1) for rate in rates],
        "peak_rss_mib": round(max(rss for _, _, rss in timed), 1),
    }


def measure(count: int, work: Path) -> dict:
    from tests.faulty_proxy import FaultyS3Proxy
    from tests.orthanc import orthanc_server

    os.environ.update(
        {"SSLFLOW_DICOMWEB_USERNAME": USER, "SSLFLOW_DICOMWEB_PASSWORD": PASSWORD, "SSLFLOW_INGEST_CACHE": "off"}
    )
    with orthanc_server(work / "orthanc", users={USER: PASSWORD}) as archive:
        stow_seconds = store(archive, count, work / "stow")
        upstream = archive.base_url.removesuffix("/dicom-web")
        with FaultyS3Proxy(upstream, slow_down_every=10**12, reset_every=10**12) as proxy:
            counted = f"dicomweb+{proxy.endpoint}/dicom-web?Modality=CT"
            _, fingerprint_seconds, fingerprint_rss = run_child(["fingerprint", counted])
            fingerprint_requests, proxy.requests[:] = _request_kinds(proxy.requests), []
            planned, plan_seconds, plan_rss = run_child(["plan", counted, str(work / "plan")])
            plan_requests, proxy.requests[:] = _request_kinds(proxy.requests), []
            documents = sorted((work / "plan").glob("*.json"), key=lambda path: -path.stat().st_size)
            counted_chunk, _, _ = run_child(["chunk", str(documents[-1]), str(work / "chunk-counted")])
            chunk_requests = _request_kinds(proxy.requests)
        direct = [work / "plan-direct" / path.name for path in documents]  # the timed chunks talk to Orthanc itself
        (work / "plan-direct").mkdir()
        for path, target in zip(documents, direct):
            target.write_text(path.read_text().replace(proxy.endpoint, upstream))
        chunks = _timed_chunks(direct, work)
    return {
        "instances": count,
        "chunks": planned["chunks"],
        "stow_seconds": round(stow_seconds, 1),
        "fingerprint": {
            "wall_seconds": round(fingerprint_seconds, 2),
            "peak_rss_mib": round(fingerprint_rss, 1),
            "requests": fingerprint_requests,
        },
        "plan": {
            "wall_seconds": round(plan_seconds, 2),
            "peak_rss_mib": round(plan_rss, 1),
            "requests": plan_requests,
            "chunk_file_bytes_largest": planned["chunk_file_bytes_largest"],
        },
        "chunk": {**chunks, "requests_of_one_chunk": chunk_requests, "images_of_that_chunk": counted_chunk["images"]},
        "qido_requests_per_instance": round(sum(plan_requests.values()) / count, 4),
        "wado_requests_per_image": round(chunk_requests.get("WADO-RS instance", 0) / counted_chunk["images"], 4),
        "requests_per_image": round(
            sum(plan_requests.values()) / count + chunk_requests.get("WADO-RS instance", 0) / counted_chunk["images"], 4
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated N")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    arguments = parser.parse_args()
    results = []
    for size in arguments.sizes.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"sslflow-dicomweb-scale-{size}-"))
        try:
            results.append(measure(int(size), work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results[-1]), flush=True)
    payload = {
        "settings": {
            "chunk_images": CHUNK_IMAGES,
            "image_size": IMAGE_SIZE,
            "instances_per_study": 4,
            "image_side": 32,
        },
        "results": results,
    }
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratios = {
            step: round(large[step]["peak_rss_mib"] / small[step]["peak_rss_mib"], 3)
            for step in ("fingerprint", "plan")
        }
        payload["largest_over_smallest"] = {
            "instances": large["instances"] / small["instances"],
            "launcher_fingerprint_peak_rss": ratios["fingerprint"],
            "plan_peak_rss": ratios["plan"],
        }
        payload["targets"] = {
            "launcher_rss_ratio_at_most_1.25": ratios["fingerprint"] <= 1.25,
            "plan_rss_ratio_at_most_1.25": ratios["plan"] <= 1.25,
        }
    print(json.dumps(payload))
    from benchmarks.common import write_result  # here: it imports torch, which the children need not carry

    write_result("dicomweb_scale", payload, arguments.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("fingerprint", "plan", "chunk"):
        stage, arguments = sys.argv[1], sys.argv[2:]
        print(
            json.dumps({"fingerprint": child_fingerprint, "plan": child_plan, "chunk": child_chunk}[stage](*arguments))
        )
    else:
        main()
