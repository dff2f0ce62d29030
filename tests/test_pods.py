"""The ingest/validate workflow run task by task as a cluster runs it: each task a pod (tests/pod_harness.py) started
from its serialized command, in a fresh process with only the pod's environment, its inputs and outputs literal
files in a moto S3 server, MLflow a server process, the pseudonym key a mounted Secret.

Chained in the order of workflows/data.py: source_fingerprint -> tracking_store -> start_data_run -> plan_ingest (a list
of chunk files) -> ingest_chunk (a map task over the file references, each index its own pod) -> join_ingest -> validate
-> finish_data_run, for PNGs and for a PACS-style DICOM export under S3 prefixes (a pod shares no disk with another, so
the sources are in the object store); then, for the PNGs, pretrain_generic (Elastic: torchrun inside the pod) and
finetune_pretrained on its encoder. Every pod's S3 requests go through a proxy (tests/faulty_proxy.py) that records
them: the join pod reads the chunks' tables and downloads no shard. The pipeline's first pod fails as Flyte must see
it: an outage recoverable, a refusal not.

The whole pipeline as pods: tests/test_pipeline_pods.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pydicom
import pytest
from dicom_files import write_pacs_folder
from flytekit.models.literals import LiteralMap
from live_mlflow import MlflowServer, free_port
from moto_s3 import moto_s3_server, s3_environment
from PIL import Image
from pod_harness import (
    PSEUDONYM_KEY,
    PodFailed,
    PodRunner,
    bind,
    literals,
    python_value,
    registered_runner,
    serialized_package,
)

from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig, ValidationConfig
from tasks.shared import Dataset

LITERAL_LIMIT = 2**20  # bytes: far below flytepropeller's maxDownloadMBs (2 MB by default)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """ssl_pipeline's and the data workflow's tasks, fast-registered (one `pyflyte package --fast` for the module)."""
    return serialized_package(tmp_path_factory.mktemp("package"), fast=True)


@pytest.fixture(scope="module")
def tasks(package):
    """The tasks with their code in the image (no code archive to download)."""
    return {name: task.in_image() for name, task in package.tasks.items()}


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _pngs(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (12, 12), dtype=np.uint8)).save(
            folder / f"img{i:03d}.png"
        )
        rows.append(f"img{i:03d}.png,case{i // 3},site-a,{'class' + str(i // 2 % 2) if i % 2 == 0 else ''}")
    (folder / "metadata.csv").write_text("path,case_id,site,label\n" + "\n".join(rows) + "\n")


def _shard_gets(requests: list[tuple[str, str]]) -> list[str]:
    """The paths of the GET requests for shard files (``.../shards/<sha256>.npy``) among a proxy's ``requests``."""
    return [
        path
        for method, path in requests
        if method == "GET" and "/shards/" in path and path.split("?")[0].endswith(".npy")
    ]


def _with_requests(proxy, run, *arguments) -> tuple:
    """(``run(*arguments)``, the requests ``proxy`` recorded while it ran: a pod's, the pods running one at a time)."""
    before = len(proxy.requests)
    result = run(*arguments)
    return result, proxy.requests[before:]


def _run_data_workflow(runner: PodRunner, tasks, source: str, config: IngestConfig, proxy) -> dict:
    """Every task of workflows/data.py validate_data as a pod, in the workflow's order; the final outputs, and the
    requests ({"plan", "chunk", "join"}) of the plan pod, the chunk pods and the join pod (from ``proxy``'s)."""
    from tasks.data_run import finish_data_run, start_data_run
    from tasks.ingest import join_ingest, plan_ingest, source_fingerprint
    from tasks.validate import validate

    fingerprint = runner.run(
        tasks["tasks.ingest.source_fingerprint"], "source-fingerprint", literals(source_fingerprint, source=source)
    )
    store = runner.run(tasks["tasks.store.tracking_store"], "tracking-store", LiteralMap({}))
    settings = literals(start_data_run, source=source, config=config, validation=ValidationConfig(), label_fractions=[])
    run = runner.run(
        tasks["tasks.data_run.start_data_run"],
        "start-data-run",
        bind((store, "o0", "tracking_store"), (fingerprint, "o0", "fingerprint"), **settings.literals),
    )
    plan_inputs = bind(
        (fingerprint, "o0", "fingerprint"), **literals(plan_ingest, source=source, config=config).literals
    )
    requests = {}
    plan, requests["plan"] = _with_requests(
        proxy, runner.run, tasks["tasks.ingest.plan_ingest"], "plan-ingest", plan_inputs
    )
    references = plan.literals["o0"].collection.literals
    assert all(reference.scalar.blob.uri.startswith("s3://flyte/raw/") for reference in references), (
        "the plan is files in the object store"
    )
    assert len({reference.hash for reference in references}) == len(references) and all(
        len(reference.hash) == 64 for reference in references
    )
    chunks = (tasks["map:ingest_chunk"], "ingest-chunk", bind((plan, "o0", "chunk")), len(references))
    decoded, requests["chunk"] = _with_requests(proxy, runner.run_map, *chunks)
    join_inputs = bind(
        (decoded, "o0", "chunks"),
        (run, "o0", "parent_run_id"),
        **literals(join_ingest, source=source, config=config).literals,
    )
    join = (tasks["tasks.ingest.join_ingest"], "join-ingest", join_inputs)
    dataset, requests["join"] = _with_requests(proxy, runner.run, *join)
    checks = literals(validate, config=ValidationConfig(), label_fractions=[])
    valid = runner.run(
        tasks["tasks.validate.validate"],
        "validate",
        bind((dataset, "o0", "dataset"), (run, "o0", "parent_run_id"), **checks.literals),
    )
    summary = runner.run(
        tasks["tasks.data_run.finish_data_run"],
        "finish-data-run",
        bind((valid, "o0", "dataset"), (run, "o0", "parent_run_id")),
    )
    assert finish_data_run.name.endswith("finish_data_run")
    return {
        "chunks": len(references),
        "dataset": valid,
        "run": run,
        "summary": python_value(summary.literals["o0"], str),
        "requests": requests,
    }


def _pretrain_and_finetune(runner: PodRunner, tasks, dataset: LiteralMap, run: LiteralMap):
    """pretrain_generic (an Elastic task: torchrun inside the pod) and finetune_pretrained on its encoder, as pods."""
    from ssl_models.augment import AugmentConfig
    from ssl_models.finetuning import FinetuneConfig
    from ssl_models.pretraining import PretrainConfig
    from tasks.finetune import finetune_pretrained
    from tasks.pretrain import pretrain_generic
    from tasks.shared import FinetunedModel

    config = PretrainConfig(epochs=1, batch_size=16, augment=AugmentConfig(output_size=16))
    settings = literals(pretrain_generic, encoder_name="small_cnn", config=config)
    encoder = runner.run(
        tasks["tasks.pretrain.pretrain_generic"],
        "pretrain-generic",
        bind((dataset, "o0", "dataset"), (run, "o0", "parent_run_id"), **settings.literals),
    )
    finetune = FinetuneConfig(
        epochs=1, head_warmup_steps=2, augment=AugmentConfig(output_size=16, crop_scale=(0.8, 1.0))
    )
    settings = literals(finetune_pretrained, label_fraction=1.0, config=finetune)
    inputs = bind(
        (dataset, "o0", "domain"), (encoder, "o0", "encoder"), (run, "o0", "parent_run_id"), **settings.literals
    )
    model = runner.run(tasks["tasks.finetune.finetune_pretrained"], "finetune-pretrained", inputs)
    return python_value(model.literals["o0"], FinetunedModel)


def _check_pod_run(runner: PodRunner, tmp_path: Path, result: dict) -> Dataset:
    """What every pod run must show: several chunk pods, the Dataset in the object store, literal files under 1 MB, a
    join that downloaded no shard (but its chunks' tables), nothing left in a pod's working directory. Returns the
    Dataset."""
    dataset = python_value(result["dataset"].literals["o0"], Dataset)
    join_gets = [path for method, path in result["requests"]["join"] if method == "GET"]
    assert any(path.split("?")[0].endswith("/chunk.parquet") for path in join_gets), "the join read the chunks' tables"
    assert not _shard_gets(result["requests"]["join"]), (
        f"the join pod downloaded shards: {_shard_gets(result['requests']['join'])[:3]}"
    )
    shard_keys = [key for key in _keys(runner, "raw/") if "/shards/" in key and key.endswith(".npy")]
    assert len(shard_keys) >= result["chunks"], "the chunk pods wrote their shards to the object store"
    in_dataset = {
        key.rsplit("/", 1)[-1]
        for key in _keys(runner, dataset.directory.remote_source.removeprefix("s3://flyte/").rstrip("/") + "/")
    }
    assert in_dataset == {"manifest.parquet", "summary.json", "shards.parquet"}, (
        f"the Dataset holds its tables, no copy of a shard: {in_dataset}"
    )
    assert result["chunks"] >= 2, "the map task ran more than one chunk pod"
    assert dataset.directory.remote_source.startswith("s3://flyte/raw/"), "the Dataset lives in the object store"
    assert dataset.num_images > 0 and str(dataset.num_images) in result["summary"]
    sizes = runner.literal_files
    assert sizes and max(sizes.values()) < LITERAL_LIMIT, sorted(sizes.items(), key=lambda item: -item[1])[:3]
    assert not any((tmp_path / "pods").glob("*/cwd/*")), "a pod leaves nothing in its working directory"
    return dataset


def _keys(runner: PodRunner, prefix: str) -> list[str]:
    """Every key under ``prefix`` in the runner's bucket."""
    pages = runner.s3.get_paginator("list_objects_v2").paginate(Bucket=runner.bucket, Prefix=prefix)
    return [entry["Key"] for page in pages for entry in page.get("Contents", [])]


def test_pngs_through_failing_s3_requests_as_pods_then_pretraining_and_fine_tuning_pods(tmp_path, monkeypatch, tasks):
    """PNGs with a metadata.csv in S3. Every pod's S3 traffic (Flyte's inputs, outputs and Dataset, and the source)
    goes through a proxy that answers every 5th request with 503 SlowDown and resets every 7th connection: the data
    workflow finishes with the dataset ingest gives without faults (in this process, same key), then an Elastic
    pretraining pod (torchrun inside it) and a fine-tuning pod on its encoder."""
    from faulty_proxy import FaultyS3Proxy

    from sslflow.data.chunks import ingest_source

    _pngs(tmp_path / "scans", 40)
    config = IngestConfig(image_size=16, chunk_images=8, shard_megabytes=1)
    monkeypatch.setenv("SSLFLOW_PSEUDONYM_KEY", PSEUDONYM_KEY)
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")
    with moto_s3_server(tmp_path) as endpoint, MlflowServer(tmp_path / "mlflow") as mlflow:
        s3_environment(monkeypatch, endpoint)
        _upload(tmp_path / "scans", "scans", "site-a")
        expected, _, _ = ingest_source("s3://scans/site-a", config, tmp_path / "expected")
        with FaultyS3Proxy(endpoint, slow_down_every=5, reset_every=7) as proxy:
            runner = registered_runner(tmp_path, endpoint, mlflow.uri, s3_endpoint=proxy.endpoint)
            result = _run_data_workflow(runner, tasks, "s3://scans/site-a", config, proxy)
            before_training = len(proxy.requests)
            model = _pretrain_and_finetune(runner, tasks, result["dataset"], result["run"])
            assert _shard_gets(proxy.requests[before_training:]), (
                "the training pods fetch shards from where the chunks wrote them"
            )
        dataset = _check_pod_run(runner, tmp_path, result)
    assert dataset.content_sha256 == expected
    assert proxy.injected["slow_down"] > 3 and proxy.injected["reset"] > 3, proxy.injected
    assert (
        model.checkpoint.remote_source.startswith("s3://flyte/raw/") and model.num_labels > 0 and model.init == "simclr"
    )


def _metadata_gets(requests: list[tuple[str, str]]) -> int:
    """How many of a proxy's ``requests`` GET the source's metadata.csv."""
    return sum(1 for method, path in requests if method == "GET" and path.split("?")[0].endswith("/metadata.csv"))


def _label_by_sop_instance_uid(folder: Path, images: list[str]) -> None:
    """A metadata.csv in ``folder`` keyed by the SOPInstanceUIDs of the DICOM files ``images`` (paths in it): every
    other object labelled, the first given a case."""
    uids = sorted({str(pydicom.dcmread(folder / path, stop_before_pixels=True).SOPInstanceUID) for path in images})
    rows = [
        f"{uid},{'class' + str(index % 4 // 2) if index % 2 == 0 else ''},{'' if index else 'case-1'}"
        for index, uid in enumerate(uids)
    ]
    (folder / "metadata.csv").write_text("sop_instance_uid,label,case_id\n" + "\n".join(rows) + "\n")


def test_a_pacs_export_in_s3_runs_as_pods(tmp_path, monkeypatch, tasks):
    """A PACS export labelled by SOPInstanceUID: the plan pod and the join pod GET its metadata.csv once each, no chunk
    pod does."""
    exported = write_pacs_folder(tmp_path / "scans", copies=2, patients=3)
    _label_by_sop_instance_uid(tmp_path / "scans", exported["path"].tolist())
    config = IngestConfig(image_size=16, chunk_images=8, shard_megabytes=1)
    from faulty_proxy import FaultyS3Proxy

    with moto_s3_server(tmp_path) as endpoint, MlflowServer(tmp_path / "mlflow") as mlflow:
        s3_environment(monkeypatch, endpoint)
        _upload(tmp_path / "scans", "scans", "site-a")
        with FaultyS3Proxy(
            endpoint, slow_down_every=10**9, reset_every=10**9
        ) as proxy:  # no faults: it records the requests
            runner = registered_runner(tmp_path, endpoint, mlflow.uri, s3_endpoint=proxy.endpoint)
            result = _run_data_workflow(runner, tasks, "s3://scans/site-a", config, proxy)
            dataset = _check_pod_run(runner, tmp_path, result)
            summary_key = dataset.directory.remote_source.removeprefix("s3://flyte/").rstrip("/") + "/summary.json"
            summary = json.loads(runner.s3.get_object(Bucket=runner.bucket, Key=summary_key)["Body"].read())
    assert summary["labelled"] > 0 and summary["case_ids"]["from"]["metadata"] >= 1, "the join applied the rows"
    gets = {step: _metadata_gets(requests) for step, requests in result["requests"].items()}
    assert gets == {"plan": 1, "chunk": 0, "join": 1}, gets


def test_a_chunk_pod_without_the_pseudonym_secret_refuses_to_run(tmp_path, monkeypatch, tasks):
    """A cluster pod with no, or an empty, sslflow/pseudonym_key Secret stops, naming the Secret, instead of
    pseudonymising with a random key of its own (one patient would become a different case in each chunk)."""
    from tasks.ingest import plan_ingest

    write_pacs_folder(tmp_path / "scans", copies=1, patients=2)
    config = IngestConfig(image_size=16, chunk_images=8, shard_megabytes=1)
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        _upload(tmp_path / "scans", "scans", "site-a")
        registered = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        # the plan pod has the Secret: it pseudonymises the UIDs of metadata keyed by SOPInstanceUID with it
        planner = PodRunner(
            tmp_path, endpoint, registered=registered, secrets={("sslflow", "pseudonym_key"): PSEUDONYM_KEY}
        )
        plan_inputs = literals(
            plan_ingest, source="s3://scans/site-a", fingerprint="not checked by the plan", config=config
        )
        plan = planner.run(tasks["tasks.ingest.plan_ingest"], "plan-ingest", plan_inputs)
        for name, secrets in {"missing": {}, "empty": {("sslflow", "pseudonym_key"): "  \n"}}.items():
            runner = PodRunner(tmp_path / name, endpoint, registered=registered, secrets=secrets)
            with pytest.raises(RuntimeError, match=f"the Flyte Secret sslflow/pseudonym_key is {name} in this pod"):
                runner.run_map(tasks["map:ingest_chunk"], "ingest-chunk", bind((plan, "o0", "chunk")), 1)


def test_outages_fail_recoverable_and_refusals_do_not(package, tmp_path):
    """The pipeline's first stage as Flyte would see it fail: with the tracking server down (an outage) its pod
    writes a RECOVERABLE error (Flyte retries it); with a label fraction over 1 (a refusal) a NON_RECOVERABLE one."""
    from sslflow.config import RegistryConfig
    from tasks.pipeline_run import start_pipeline_run

    settings = {
        "generic_source": "mnist-5k",
        "domain_source": "mnist-5k",
        "shift_source": "optdigits",
        "source_fingerprints": ["0" * 64, "1" * 64, "2" * 64],  # source_fingerprint's outputs, one per source
        "encoder_name": "small_cnn",
        "generic_pretraining": PretrainConfig(),
        "domain_pretraining": PretrainConfig(),
        "finetune": FinetuneConfig(),
        "seeds": [0],
        "self_train": SelfTrainConfig(),
        "registry": RegistryConfig(),
        "tracking_store": "http://127.0.0.1",
    }
    task = package.tasks["tasks.pipeline_run.start_pipeline_run"]
    with moto_s3_server(tmp_path) as endpoint:
        runner = registered_runner(
            tmp_path, endpoint, f"http://127.0.0.1:{free_port()}", fast_archive=package.fast_archive
        )
        runner.registered["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        with pytest.raises(PodFailed) as outage:
            runner.run(task, "tracking-server-down", literals(start_pipeline_run, label_fractions=[1.0], **settings))
        with pytest.raises(PodFailed) as refusal:
            runner.run(task, "label-fraction-over-one", literals(start_pipeline_run, label_fractions=[1.5], **settings))
    assert (
        outage.value.recoverable
        and outage.value.origin == "USER"
        and "TrackingServerUnavailable" in outage.value.message
    )
    assert not refusal.value.recoverable and refusal.value.origin == "USER" and "1.5" in refusal.value.message
