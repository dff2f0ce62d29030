"""ingest: a source -> a Dataset, decoded in parallel chunks (plan -> map task -> join).

The fingerprint is source_fingerprint's output (tasks/ingest.py), computed in a pod by the calling workflow's first
step; the plan is cached on it.

    plan_ingest (list, no decoding; a file per chunk) -> ingest_chunk x chunk files (map task, INGEST_CONCURRENCY at
    once)
        -> join_ingest (the chunks' tables; the Dataset points at their shards)

Locally the same workflow runs, the chunks one after another.
"""

from __future__ import annotations

from flytekit import map_task, workflow

from sslflow.config import IngestConfig
from tasks.ingest import INGEST_CONCURRENCY, ingest_chunk, join_ingest, plan_ingest
from tasks.shared import Dataset


@workflow
def ingest(source: str, fingerprint: str, config: IngestConfig, parent_run_id: str) -> Dataset:
    chunks = plan_ingest(source=source, fingerprint=fingerprint, config=config)
    decoded = map_task(ingest_chunk, concurrency=INGEST_CONCURRENCY)(chunk=chunks)
    return join_ingest(source=source, chunks=decoded, config=config, parent_run_id=parent_run_id)
