"""The cluster data path at scale: N extensionless DICOM files (a PACS export, some of them multi-frame) with a
metadata.csv in an S3 server, ingested by the functions the Flyte ingest tasks run, each step in a process of its own
as each task is a pod of its own.

For each N: a moto S3 server (tests/moto_s3.py) behind a proxy that counts the requests (tests/faulty_proxy.py, no
faults) holds N small synthetic DICOM files without a suffix, four per patient, under patient folders; every
MULTIFRAME_EVERY-th file is a multi-frame object of FRAMES frames (each frame an image), and every LARGE_EVERY-th
file one of LARGE_SIDE x LARGE_SIDE frames, over the FRAME_PROBE_BYTES (1 MiB) from which the plan reads a file's
DICOM header for its frames (so the plan's header reads and its cut by frames run at scale); a metadata.csv at the
prefix names every file by path with its case (the patient folder) and a label. Then, in separate processes whose peak
resident set is sampled from /proc:

- launch: what `pyflyte run --remote` does where it is launched: ssl_pipeline and validate_data compiled and
  serialized, the S3 source turned into an input literal (its S3 requests are counted: none is the target);
- fingerprint: ``fingerprint_source`` (the work of tasks/ingest.source_fingerprint, the run's first task, a pod);
- plan: ``plan_to_files`` (tasks/ingest.plan_ingest's work: the listing joined with metadata.csv) and the literal
  plan_ingest returns (its Flyte LiteralMap, serialised) with the literal the join receives;
- chunks: ``decode_chunk`` of every chunk document, one process per core at a time (the map task's pods);
- join: ``join_chunks`` on the chunks' tables; the bytes it reads and writes (``/proc/self/io`` rchar + wchar
  around the call) against the dataset's bytes (its shards).

Reports per N: peak RSS of the fingerprint, plan, join and the largest chunk process, each chunk's images against
the most it held decoded at once and its batch_images (``chunks_held``: the plan counts a multi-frame file under
FRAME_PROBE_BYTES as one image, so a chunk may hold more images than its batch and is decoded in sub-batches), bytes
moved by the join over the dataset's bytes, the largest literal in bytes, S3 requests per step by kind, wall seconds
per step.

    python benchmarks/cluster_scale.py                                   # N = 10,000 and 100,000
    python benchmarks/cluster_scale.py --sizes 2000 --image-size 32      # a quick look

Targets: plan, chunk and join peak RSS at N=100,000 <= 1.25 x at N=10,000; join bytes over dataset bytes <= 0.01;
the largest literal <= 1 MB; no S3 request from the launching process; every chunk held under its batch_images +
FRAMES images decoded at once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.data_scale import run_measured

IMAGES_PER_PATIENT = 4
SIDE = 32
IMAGE_SIZE = 224  # ingest's image size by default (--image-size): the join's bytes are compared with the dataset's
MULTIFRAME_EVERY, FRAMES = 10, 8  # every 10th file a multi-frame object of 8 frames (8 images)
# every 100th file (a multi-frame one) of 8 frames of 256 x 256: 1 MiB of pixels, over chunks.FRAME_PROBE_BYTES with
# its header; every 100th, not every 10th, so that 10^5 files upload 1 GB and not 10
LARGE_EVERY, LARGE_SIDE = 100, 256
LABELS = 3
CHUNK_IMAGES = 4096  # IngestConfig's default: a chunk pod's memory is chosen for the pod, not the source
BUCKET, PREFIX = "hospital", "pacs-export"
PSEUDONYM_KEY = "cluster-scale-benchmark-key"
UPLOAD_THREADS = 16


def dicom_bytes(index: int) -> bytes:
    """A small CT image (SIDE x SIDE, 12 bits; FRAMES of them for every MULTIFRAME_EVERY-th index, of LARGE_SIDE x
    LARGE_SIDE for every LARGE_EVERY-th) of patient index // IMAGES_PER_PATIENT, as a DICOM Part 10 file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    rng = np.random.default_rng(index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{index + 1}"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    patient = index // IMAGES_PER_PATIENT
    ds.PatientID, ds.StudyInstanceUID = f"MRN{patient:07d}", f"1.2.826.0.1.3680043.8.499.{patient + 1}"
    ds.SeriesInstanceUID, ds.Modality = f"1.2.826.0.1.3680043.8.500.{patient + 1}", "CT"
    ds.Rows = ds.Columns = LARGE_SIDE if index % LARGE_EVERY == 0 else SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    frames = FRAMES if index % MULTIFRAME_EVERY == 0 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 4096, (frames, ds.Rows, ds.Columns), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def object_key(index: int) -> str:
    """Where a PACS export puts the file: a folder per patient, the file named by a number, no suffix."""
    return f"{PREFIX}/patient{index // IMAGES_PER_PATIENT:07d}/IM{index % IMAGES_PER_PATIENT:04d}"


def metadata_csv(count: int) -> bytes:
    """metadata.csv naming every file by its path below the prefix, with its case (the patient folder) and a label."""
    rows = (
        f"{object_key(index)[len(PREFIX) + 1 :]},patient{index // IMAGES_PER_PATIENT:07d},"
        f"{index // IMAGES_PER_PATIENT % LABELS}"
        for index in range(count)
    )
    return ("path,case_id,label\n" + "\n".join(rows) + "\n").encode()


def upload(count: int) -> float:
    """Put ``count`` DICOM files and the metadata.csv into the bucket (straight to the server, not counted); returns the
    seconds."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    started = time.perf_counter()
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/metadata.csv", Body=metadata_csv(count))
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(
            pool.map(
                lambda index: client.put_object(Bucket=BUCKET, Key=object_key(index), Body=dicom_bytes(index)),
                range(count),
            )
        )
    return time.perf_counter() - started


def _literal_bytes(values, python_type) -> int:
    """Bytes of the LiteralMap a task returning ``values`` as its one output (of ``python_type``) writes."""
    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine
    from flytekit.models.literals import LiteralMap

    context = FlyteContextManager.current_context()
    literal = TypeEngine.to_literal(context, values, python_type, TypeEngine.to_literal_type(python_type))
    return LiteralMap({"o0": literal}).to_flyte_idl().ByteSize()


def chunk_output_uri(index: int) -> str:
    """Where Flyte on a cluster writes the output directory of map-task subtask ``index`` (the shape and length of
    such a URI: raw-output prefix, shard, execution, node, attempt), for the join's input literal."""
    return f"s3://flyte-raw-data-bucket/data/2x/aq9vzqbk4hz7g5mrtx6c-n0-0-n1-0-dn{index}-0/{'a' * 32}"


def child_launch(source: str) -> dict:
    """What `pyflyte run --remote` does where it is launched: the workflows compiled and serialized (registration), the
    source turned into each workflow's input literal."""
    from flytekit import FlyteContextManager
    from flytekit.configuration import Image, ImageConfig, SerializationSettings
    from flytekit.core.type_engine import TypeEngine
    from flytekit.tools.translator import get_serializable

    from workflows.data import validate_data
    from workflows.pipeline import ssl_pipeline

    settings = SerializationSettings(
        image_config=ImageConfig(default_image=Image(name="default", fqn="registry.example.com/sslflow", tag="0"))
    )
    context = FlyteContextManager.current_context()
    for workflow, name in ((ssl_pipeline, "domain_source"), (validate_data, "source")):
        get_serializable({}, settings, workflow)
        python_type = workflow.python_interface.inputs[name]
        TypeEngine.to_literal(context, source, python_type, TypeEngine.to_literal_type(python_type))
    return {}


def child_fingerprint(source: str) -> dict:
    from sslflow.data.sources import fingerprint_source

    return {"fingerprint": fingerprint_source(source)}


def child_plan(source: str, plan_folder: str) -> dict:
    """plan_ingest's work and its output literal; the join's input literal (one directory per chunk)."""
    from flytekit.types.directory import FlyteDirectory
    from flytekit.types.file import FlyteFile

    from sslflow.config import IngestConfig
    from sslflow.data.chunks import plan_to_files
    from tasks.ingest import ingest_chunk, join_ingest, plan_ingest

    paths = plan_to_files(source, IngestConfig(image_size=image_size(), chunk_images=CHUNK_IMAGES), Path(plan_folder))
    plan_type = plan_ingest.python_interface.outputs["o0"]
    one_chunk_type = ingest_chunk.python_interface.inputs["chunk"]
    join_type = join_ingest.python_interface.inputs["chunks"]
    return {
        "chunks": len(paths),
        "chunk_file_bytes_largest": max(path.stat().st_size for path in paths),
        "literal_bytes": {
            "plan_ingest output": _literal_bytes([FlyteFile(str(path)) for path in paths], plan_type),
            "ingest_chunk input (largest)": _literal_bytes(FlyteFile(str(paths[0])), one_chunk_type),
            "join_ingest input chunks": _literal_bytes(
                [FlyteDirectory(chunk_output_uri(index)) for index in range(len(paths))], join_type
            ),
        },
    }


def child_chunk(document: str, folder: str) -> dict:
    """decode_chunk of one chunk document; its images, its batch_images (the document's) and how it held them (its
    chunk.json: the most images held decoded at once, in how many sub-batches)."""
    from sslflow.data.chunks import CHUNK_REPORT, decode_chunk

    text = Path(document).read_text()
    report = json.loads((decode_chunk(text, Path(folder), pseudonym_key=PSEUDONYM_KEY) / CHUNK_REPORT).read_text())
    return {
        "images": report["images"],
        "batch_images": json.loads(text)["batch_images"],
        "decoded_at_most": report["decoded_at_most"],
        "sub_batches": report["sub_batches"],
    }


def image_size() -> int:
    """The image size ingest decodes to: --image-size, passed to the step processes in $CLUSTER_SCALE_IMAGE_SIZE."""
    return int(os.environ.get("CLUSTER_SCALE_IMAGE_SIZE", IMAGE_SIZE))


def _io_bytes() -> int:
    counters = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(counters["rchar"]) + int(counters["wchar"])


def child_join(chunk_folders: str, dataset: str) -> dict:
    """join_chunks on the chunk folders (each a chunk task's output); bytes read and written by the call itself."""
    from sslflow.config import IngestConfig
    from sslflow.data.chunks import SHARDS, DecodedChunk, join_chunks

    folders = [Path(line) for line in Path(chunk_folders).read_text().splitlines()]
    chunks = [DecodedChunk(folder, str(folder / SHARDS)) for folder in folders]
    before = _io_bytes()
    sha256, summary = join_chunks(
        chunks, IngestConfig(image_size=image_size(), chunk_images=CHUNK_IMAGES), Path(dataset)
    )
    moved = _io_bytes() - before
    shard_bytes = sum(path.stat().st_size for folder in folders for path in (folder / SHARDS).iterdir())
    return {
        "images": summary["images"],
        "sha256": sha256,
        "join_bytes_moved": moved,
        "dataset_shard_bytes": shard_bytes,
    }


def run_child(arguments: list[str]) -> tuple[dict, float, float]:
    """This script with ``arguments`` in a child process: (its JSON result, wall seconds, peak tree RSS MiB)."""
    result, seconds, rss, _ = run_measured(arguments, dict(os.environ), script=Path(__file__))
    return result, seconds, rss


def _request_kinds(requests: list[tuple[str, str]]) -> dict[str, int]:
    """Requests by kind: ListObjectsV2, GetObject, HeadObject, ... (from method and query)."""
    kinds = Counter()
    for method, path in requests:
        kinds[
            "ListObjectsV2"
            if "list-type=2" in path
            else f"{method} object"
            if "?" not in path or "x-id=" in path
            else f"{method} {path.split('?')[1][:20]}"
        ] += 1
    return dict(sorted(kinds.items()))


def decode_chunks(documents: list[Path], work: Path, workers: int) -> tuple[list[Path], float, list[dict]]:
    """Every chunk decoded in a process of its own, ``workers`` at a time (the map task's pods); the largest peak
    RSS; each chunk's images and how it held them (child_chunk), the chunk with the most images first."""
    folders = [work / f"chunk-{index:05d}" for index in range(len(documents))]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda pair: run_child(["chunk", str(pair[0]), str(pair[1])]), zip(documents, folders)))
    held = sorted((result for result, _, _ in results), key=lambda result: -result["images"])
    return folders, max(rss for _, _, rss in results), held


def measure(count: int, work: Path, workers: int) -> dict:
    from tests.faulty_proxy import FaultyS3Proxy
    from tests.moto_s3 import moto_s3_server

    work.mkdir(parents=True, exist_ok=True)
    source = f"s3://{BUCKET}/{PREFIX}"
    with moto_s3_server(work) as endpoint, FaultyS3Proxy(endpoint, slow_down_every=10**12, reset_every=10**12) as proxy:
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "benchmark",
                "AWS_SECRET_ACCESS_KEY": "benchmark",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "SSLFLOW_INGEST_CACHE": "off",
            }
        )  # (no local decode cache, as the task images set)
        upload_seconds = upload(count)
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint  # the steps below talk to S3 through the counting proxy
        steps, requests = {}, {}
        for step in ("launch", "fingerprint", "plan", "chunks", "join"):
            proxy.requests.clear()
            if step == "launch":
                _, seconds, rss = run_child(["launch", source])
            elif step == "fingerprint":
                _, seconds, rss = run_child(["fingerprint", source])
            elif step == "plan":
                planned, seconds, rss = run_child(["plan", source, str(work / "plan")])
                documents = sorted((work / "plan").glob("*.json"), key=lambda path: -path.stat().st_size)
            elif step == "chunks":
                started = time.perf_counter()
                folders, rss, held = decode_chunks(documents, work, workers)
                seconds = time.perf_counter() - started
                (work / "chunk-folders.txt").write_text("\n".join(str(folder) for folder in folders))
            else:
                joined, seconds, rss = run_child(["join", str(work / "chunk-folders.txt"), str(work / "dataset")])
            steps[step] = {"wall_seconds": round(seconds, 1), "peak_rss_mib": round(rss, 1)}
            requests[step] = _request_kinds(list(proxy.requests))
    return {
        "files": count,
        "images": joined["images"],
        "chunks": planned["chunks"],
        # per chunk, most images first: its images, batch_images, the most images held decoded at once, sub-batches
        "chunks_held": held,
        "upload_seconds": round(upload_seconds, 1),
        "steps": steps,
        "s3_requests": requests,
        "literal_bytes": planned["literal_bytes"],
        "largest_literal_bytes": max(planned["literal_bytes"].values()),
        "chunk_file_bytes_largest": planned["chunk_file_bytes_largest"],
        "join_bytes_moved": joined["join_bytes_moved"],
        "dataset_shard_bytes": joined["dataset_shard_bytes"],
        "join_bytes_over_dataset_bytes": round(joined["join_bytes_moved"] / joined["dataset_shard_bytes"], 5),
    }


def compared(results: list[dict]) -> dict:
    """The largest N's figures over the smallest's (two sizes or more) and the targets met."""
    payload: dict = {"targets": {}}
    if len(results) >= 2:
        small, large = results[0], results[-1]
        payload["largest_over_smallest"] = {
            "files": large["files"] / small["files"],
            **{
                f"{step}_peak_rss": round(
                    large["steps"][step]["peak_rss_mib"] / small["steps"][step]["peak_rss_mib"], 3
                )
                for step in ("fingerprint", "plan", "chunks", "join")
            },
            "largest_literal": round(large["largest_literal_bytes"] / small["largest_literal_bytes"], 3),
        }
        payload["targets"] = {
            **{
                f"{step}_rss_ratio_at_most_1.25": payload["largest_over_smallest"][f"{step}_peak_rss"] <= 1.25
                for step in ("plan", "chunks", "join")
            },
            "join_bytes_ratio_at_most_0.01": all(result["join_bytes_over_dataset_bytes"] <= 0.01 for result in results),
            "largest_literal_at_most_1MB": large["largest_literal_bytes"] <= 2**20,
        }
    if results:
        payload["targets"]["no_s3_request_from_the_launching_process"] = all(
            not result["s3_requests"]["launch"] for result in results
        )
        # a chunk holds under its batch_images + one file's frames decoded at once, whatever its files' frames
        payload["targets"]["chunk_held_under_batch_plus_a_files_frames"] = all(
            chunk["decoded_at_most"] < chunk["batch_images"] + FRAMES
            for result in results
            for chunk in result["chunks_held"]
        )
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="the size ingest decodes images to (px)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    arguments = parser.parse_args()
    os.environ["CLUSTER_SCALE_IMAGE_SIZE"] = str(arguments.image_size)
    workers = len(os.sched_getaffinity(0))
    results = []
    for size in arguments.sizes.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"sslflow-cluster-scale-{size}-"))
        try:
            results.append(measure(int(size), work, workers))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results[-1]), flush=True)
    settings = {
        "chunk_images": CHUNK_IMAGES,
        "image_size": arguments.image_size,
        "images_per_patient": IMAGES_PER_PATIENT,
        "image_side": SIDE,
        "multiframe_every": MULTIFRAME_EVERY,
        "frames": FRAMES,
        "large_every": LARGE_EVERY,
        "large_side": LARGE_SIDE,
        "metadata_csv": "path,case_id,label",
        "chunk_workers": workers,
    }
    payload = {"settings": settings, "results": results, **compared(results)}
    print(json.dumps(payload))
    from benchmarks.common import write_result  # here: it imports torch, which the children need not carry

    write_result("cluster_scale", payload, arguments.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("launch", "fingerprint", "plan", "chunk", "join"):
        stage, arguments = sys.argv[1], sys.argv[2:]
        child = {
            "launch": child_launch,
            "fingerprint": child_fingerprint,
            "plan": child_plan,
            "chunk": child_chunk,
            "join": child_join,
        }[stage]
        print(json.dumps(child(*arguments)))
    else:
        main()
