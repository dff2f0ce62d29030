"""A tiny ssl_pipeline against a real `mlflow server` (sqlite backend store, proxied artifacts in a
temporary folder): every stage logs there, the model is registered and loads by alias over HTTP."""

from __future__ import annotations

import json

import mlflow
import numpy as np
from inprocess_elastic import with_inprocess_elastic
from live_mlflow import MlflowServer, mlflow_at
from mlflow.tracking import MlflowClient

from ssl_models.finetuning import FinetuneConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig, RegistryConfig
from sslflow.registry.aliases import CHAMPION, COMPLETE, STATE_TAG
from sslflow.tracking.store import EXPERIMENT_NAME
from workflows.pipeline import ssl_pipeline

MODEL_NAME = "sslflow-live-server"
TINY = {  # sizes no other test uses, so Flyte's session-wide cache cannot answer for a stage
    "generic_ingest": IngestConfig(max_images=150),
    "domain_ingest": IngestConfig(proxy_cases=True, max_images=300),
    "shift_ingest": IngestConfig(all_test=True, max_images=120),
    "generic_pretraining": PretrainConfig(epochs=1, batch_size=64),
    "domain_pretraining": PretrainConfig(epochs=1, batch_size=64),
    "finetune": FinetuneConfig(epochs=1, min_steps=2, head_warmup_steps=0),
    "label_fractions": [1.0],
    "registry": RegistryConfig(model_name=MODEL_NAME),
}


def test_tiny_pipeline_logs_and_registers_on_a_live_server(tmp_path, monkeypatch):
    with_inprocess_elastic(monkeypatch)
    with MlflowServer(tmp_path) as server, mlflow_at(monkeypatch, server.uri):
        summary = ssl_pipeline(**TINY)
        assert f"Registered model: {MODEL_NAME} version 1" in summary and server.uri in summary

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server stores artifacts
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        stages = {run.data.tags.get("sslflow.stage", "PARENT"): run.info.status for run in runs}
        for stage in ("PARENT", "pretrain_generic", "pretrain_case_pairs", "evaluate", "register"):
            assert stages.get(stage) == "FINISHED", (stage, stages)

        champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
        assert champion.version == "1" and champion.tags[STATE_TAG] == COMPLETE
        assert any((tmp_path / "artifacts").rglob("MLmodel"))
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
        probabilities = model.predict(np.zeros((2, 1, 28, 28), dtype=np.float32))
        assert probabilities.shape == (2, len(json.loads(champion.tags["class_names"])))
