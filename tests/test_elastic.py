"""The pretraining task under Flyte's Elastic plugin with 2 worker processes on one machine (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

SCRIPT = """
from flytekit import workflow
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from tasks.ingest import source_fingerprint
from workflows.ingest import ingest
from tasks.pretrain import pretrain_generic
from sslflow.tracking.runs import start_parent_run

@workflow
def pretrain_only(run_id: str):
    fingerprint = source_fingerprint(source="mnist-5k")
    dataset = ingest(
        source="mnist-5k", fingerprint=fingerprint, config=IngestConfig(max_images=300), parent_run_id=run_id
    )
    config = PretrainConfig(epochs=1, batch_size=32, seed=11)
    pretrain_generic(dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)

pretrain_only(run_id=start_parent_run("elastic-test", {}))
"""


def test_pretraining_task_runs_with_two_elastic_workers(tmp_path):
    env = dict(os.environ, SSLFLOW_NPROC_PER_NODE="2", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("sslflow").experiment_id], "tags.`sslflow.stage` = 'pretrain_generic'"
    )
    assert len(runs) == 1, "only rank 0 logs to MLflow"
    assert runs[0].data.params["world_size"] == "2"
