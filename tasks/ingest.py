"""ingest, as a first step and three tasks (wired in workflows/ingest.py). source_fingerprint, in a pod of the cluster
(never where `pyflyte run --remote` is launched: that process needs no bucket credentials and sends no request to the
source), checks the services a run needs and returns the source's fingerprint; it is not cached, so every execution
sees the files as they are now, and its output is an input of plan_ingest, so the plan's cache key holds it: a rerun
on unchanged data hits the cache, a changed source misses it. plan_ingest lists a source and cuts it into chunks,
each chunk document a file (the plan's literal holds one reference per chunk, whatever the number of files),
ingest_chunk decodes one chunk into shards (a map task over the references: chunks in parallel, each a cache
hit when its files are unchanged: a reference's cache hash is its document's sha256), join_ingest joins the
chunks' tables into a Dataset whose shard table points at the chunks' shards where they were written: no
shard is downloaded or copied (sslflow/data/chunks.py, sslflow/data/dataset.py).

Bad input stops the run here, before any training, with a SourceError naming the file, row or key
(sslflow/data/sources/ lists the sources, sslflow/data/metadata.py the metadata rules). DICOM
identities and the image keys that replace file paths are pseudonymised by the chunk tasks (and the UIDs of
metadata keyed by SOPInstanceUID by the plan and the join) with the key of
the Flyte Secret sslflow/pseudonym_key when it is mounted (sslflow/data/pseudonyms.py for the local
fallbacks): paths are in the plan and the chunk documents only, never in a chunk's output or the Dataset. Raw inputs
are only read; chunks and the dataset are written to temporary folders and renamed into place, so a
failed chunk or join leaves nothing a later run could mistake for a dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from flytekit import Cache, FlyteContextManager, HashMethod, Resources, Secret, current_context, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile

from images.specs import cpu_image
from sslflow.config import IngestConfig
from sslflow.data.chunks import (
    CHUNK_REPORT,
    CHUNK_TABLE,
    SHARDS,
    DecodedChunk,
    chunk_file_sha256,
    decode_chunk,
    join_chunks,
    plan_to_files,
)
from sslflow.data.sources import fingerprint_source, source_name
from sslflow.data.sources.dicomweb_http import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV
from sslflow.errors import Refusal
from tasks.shared import MLFLOW_SECRETS, Dataset, content_hash, outages_are_recoverable, pipeline_cache

# MLflow (about 1.5 s of CPU to import) is imported in source_fingerprint and join_ingest, the tasks that talk to the
# tracking server: the pods of plan_ingest and ingest_chunk (hundreds of chunks at 10^6 files) never load it.

# Chunk pods decoding at once (the map task's concurrency); set where the workflow is registered.
INGEST_CONCURRENCY = int(os.environ.get("SSLFLOW_INGEST_CONCURRENCY", "16"))


PSEUDONYM_SECRET = Secret(group="sslflow", key="pseudonym_key")  # locally also $SSLFLOW_PSEUDONYM_KEY (flytekit)
# A DICOMweb archive's credentials (docs/data.md), requested only where the workflow is registered with
# SSLFLOW_DICOMWEB_AUTH=token or basic: a Secret that does not exist would keep every ingest pod from starting.
DICOMWEB_SECRETS = {
    "token": [
        Secret(group="sslflow-dicomweb", key="token", env_var=TOKEN_ENV, mount_requirement=Secret.MountType.ENV_VAR)
    ],
    "basic": [
        Secret(group="sslflow-dicomweb", key=key, env_var=name, mount_requirement=Secret.MountType.ENV_VAR)
        for key, name in (("username", USERNAME_ENV), ("password", PASSWORD_ENV))
    ],
}.get(os.environ.get("SSLFLOW_DICOMWEB_AUTH", ""), [])


class MissingSecretError(Refusal, RuntimeError):
    """A pod of a cluster execution without the pseudonym key Secret."""


def _pseudonym_key() -> str | None:
    """The Flyte Secret sslflow/pseudonym_key. Required in a pod of a cluster execution: without it every chunk pod
    would make a random key of its own, one patient would get a different case id in each chunk (landing in train
    and test, losing its MICLe pairs) and nothing would fail. Locally None when it is not mounted (sslflow then uses
    $SSLFLOW_PSEUDONYM_KEY or its key file)."""
    try:
        key = current_context().secrets.get(PSEUDONYM_SECRET.group, PSEUDONYM_SECRET.key)
    except ValueError:  # not mounted
        key = None
    if key and key.strip():
        return key
    if os.environ.get("FLYTE_INTERNAL_EXECUTION_ID"):  # set in every pod of a Flyte cluster execution
        raise MissingSecretError(
            f"the Flyte Secret {PSEUDONYM_SECRET.group}/{PSEUDONYM_SECRET.key} is "
            f"{'empty' if key is not None else 'missing'} in this pod: "
            "create it in the project's namespace (e.g. kubectl -n <project>-<domain> create secret generic "
            f"{PSEUDONYM_SECRET.group} --from-literal={PSEUDONYM_SECRET.key}=$(openssl rand -hex 32)) and keep it; "
            "without it each chunk pod would pseudonymise with a key of its own and one patient would become several "
            "cases"
        )
    return None


def _log_summary(summary: dict, sha256: str) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            "images": summary["images"],
            "cases": summary["cases"],
            "duplicates_dropped": summary["duplicates_dropped"],
            "quarantined": len(summary["quarantined"]),
            "held_back": sum(summary["held_back"].values()),
            "instance_copies_dropped": summary["instance_copies_dropped"],
            "images_without_case_id": summary["case_ids"]["none"],
            "sites": len(summary["sites"]),
            "skipped_non_image": sum(summary["skipped_non_image"].values()),
            "chunks": len(summary["chunks"]),
            "shards": summary["shards"],
            "unlisted_files": summary["unlisted_files"]["count"],
            **{f"read.{key}": value for key, value in summary["read"].items()},
        }
    )
    mlflow.log_dict(summary, "ingest_summary.json")
    mlflow.set_tag("dataset.sha256", sha256)
    if summary["case_ids_are_proxy"]:
        mlflow.set_tag("case_ids", "PROXY (pixel-neighbour groups; the source has no real case ids)")


def _chunk_sha256(chunk: FlyteFile) -> str:
    """HashMethod of a chunk reference: the sha256 of its chunk document (files, content hashes, decode settings)."""
    return chunk_file_sha256(Path(chunk.download()))


# A chunk document in a file; Flyte keys the chunk task's cache on the document's content, not the file's URI.
ChunkFile = Annotated[FlyteFile, HashMethod(_chunk_sha256)]


@task(
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="2Gi"),
    retries=2,
    secret_requests=DICOMWEB_SECRETS + MLFLOW_SECRETS,
)
@outages_are_recoverable
def source_fingerprint(source: str) -> str:
    """The first step of a run, never cached: the tracking server and the source's service are checked (one request
    each, sslflow/services.py: UnreachableService names the one that did not answer), then the source's fingerprint
    (sslflow/data/fingerprint.py: a sha256 that changes whenever what ingest reads does) is computed here, in the
    pod."""
    from sslflow.services import check_services

    check_services([source])
    return fingerprint_source(source)


@task(
    cache=Cache(version="13"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="2Gi"),
    retries=2,
    secret_requests=[PSEUDONYM_SECRET, *DICOMWEB_SECRETS],
)
@outages_are_recoverable
def plan_ingest(source: str, fingerprint: str, config: IngestConfig) -> list[ChunkFile]:
    """The chunks of ``source``, each a JSON file (decode settings + files with their content hashes), the chunks
    with the most images first; nothing is decoded. fingerprint: source_fingerprint's output, there for the cache key
    (the source as it was when this execution started). Metadata keyed by SOPInstanceUID is checked here and its
    labelled rows named in the chunk documents by digests of their UIDs' pseudonyms: the Flyte Secret
    sslflow/pseudonym_key, the key the chunks decode with."""
    folder = Path(current_context().working_directory) / "plan"
    return [FlyteFile(str(path)) for path in plan_to_files(source, config, folder, pseudonym_key=_pseudonym_key())]


@task(
    cache=Cache(version="11"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="4Gi"),
    retries=2,
    secret_requests=[PSEUDONYM_SECRET, *DICOMWEB_SECRETS],
)
@outages_are_recoverable
def ingest_chunk(chunk: ChunkFile) -> FlyteDirectory:
    """Decode one chunk into shards + its tables, a sub-batch of images at a time; memory grows with
    IngestConfig.chunk_images, not with the source nor with the frames its files hold.
    DICOM identities are pseudonymised with the Flyte Secret sslflow/pseudonym_key (never in the chunk document)."""
    document = Path(chunk.download())
    folder = Path(current_context().working_directory) / f"chunk-{chunk_file_sha256(document)[:16]}"
    return FlyteDirectory(str(decode_chunk(document.read_text(), folder, pseudonym_key=_pseudonym_key())))


def _chunk_tables(chunks: list[FlyteDirectory], work: Path) -> list[DecodedChunk]:
    """Each chunk output's tables, local (downloaded from the blob store on a cluster: its table and report, not its
    shards), with where its shards are (the output's URI or local path)."""
    file_access = FlyteContextManager.current_context().file_access
    decoded = []
    for index, chunk in enumerate(chunks):
        location = (chunk.remote_source or str(chunk.path)).rstrip("/")
        if not file_access.is_remote(location):
            decoded.append(DecodedChunk(Path(location), f"{location}/{SHARDS}"))
            continue
        tables = work / f"chunk-{index:05d}"
        tables.mkdir(parents=True)
        for name in (CHUNK_REPORT, CHUNK_TABLE):
            file_access.get_data(f"{location}/{name}", str(tables / name))
        decoded.append(DecodedChunk(tables, f"{location}/{SHARDS}"))
    return decoded


# The join's /tmp: the chunks' tables (~400 B per image) and its sqlite facts (~105 B per image) with their sort
# files; about 1 GB at 10^6 images, room for several million.
JOIN_SCRATCH = "8Gi"


@task(
    cache=pipeline_cache("12"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="4Gi", ephemeral_storage=JOIN_SCRATCH),
    retries=2,
    secret_requests=[PSEUDONYM_SECRET, *MLFLOW_SECRETS],
)
@outages_are_recoverable
def join_ingest(
    source: str, chunks: list[FlyteDirectory], config: IngestConfig, parent_run_id: str
) -> Annotated[Dataset, HashMethod(content_hash)]:
    """Deduplicate, subsample, cases and splits over every chunk; write the Dataset (manifest + summary + a shard
    table pointing at the chunks' shards). Reads the chunks' tables, not their shards, and the source's metadata
    keyed by SOPInstanceUID when it has one (its UIDs pseudonymised with the Flyte Secret sslflow/pseudonym_key)."""
    from sslflow.tracking.runs import stage_run

    name = source_name(source)
    with stage_run(parent_run_id, f"ingest:{name}", {"source": source, "config": config}) as run:
        work = Path(current_context().working_directory)
        directory = work / f"dataset-{name}"
        tables = _chunk_tables(chunks, work / "chunk-tables")
        sha256, summary = join_chunks(tables, config, directory, pseudonym_key=_pseudonym_key())
        _log_summary(summary, sha256)
    return Dataset(
        directory=FlyteDirectory(str(directory)),
        name=name,
        num_images=summary["images"],
        content_sha256=sha256,
        mlflow_run_id=run.info.run_id,
    )
