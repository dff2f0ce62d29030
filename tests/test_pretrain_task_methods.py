"""The pretraining tasks with another method than SimCLR: the encoder names its arm, every epoch's kNN accuracy on the
val split reaches MLflow beside the loss, and the domain rung continues the generic encoder's method."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
from flytekit import workflow
from inprocess_elastic import with_inprocess_elastic

from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.ladder import LadderError
from sslflow.tracking.runs import start_parent_run
from tasks.ingest import source_fingerprint
from tasks.pretrain import _continued_config, pretrain_domain, pretrain_generic
from tasks.shared import EncoderCheckpoint
from workflows.ingest import ingest


@workflow
def _moco_generic_and_domain_rungs(run_id: str) -> tuple[EncoderCheckpoint, EncoderCheckpoint]:
    fingerprint = source_fingerprint(source="mnist-5k")
    dataset = ingest(
        source="mnist-5k", fingerprint=fingerprint, config=IngestConfig(max_images=300), parent_run_id=run_id
    )
    config = PretrainConfig(method="moco", epochs=2, batch_size=64, method_settings={"queue_size": 128})
    generic = pretrain_generic(dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)
    # no method: the generic rung's (method settings need the method named: they are checked against it)
    domain_config = PretrainConfig(epochs=1, batch_size=64)
    return generic, pretrain_domain(dataset=dataset, initial=generic, config=domain_config, parent_run_id=run_id)


def test_moco_pretraining_task_logs_knn_accuracy_per_epoch(monkeypatch):
    with_inprocess_elastic(monkeypatch)  # the subject is the method's logging, not the launcher (test_elastic)
    encoder, domain = _moco_generic_and_domain_rungs(run_id=start_parent_run("methods-task-test", {}))
    assert encoder.arm == "moco" and domain.arm == "moco+domain"  # the method is given once
    client = mlflow.tracking.MlflowClient()
    knn = client.get_metric_history(encoder.mlflow_run_id, "knn_accuracy")
    assert sorted(m.step for m in knn) == [0, 1] and all(0.0 <= m.value <= 1.0 for m in knn)
    assert len(client.get_metric_history(encoder.mlflow_run_id, "loss")) == 2
    assert client.get_run(encoder.mlflow_run_id).data.params["method"] == "moco"
    assert client.get_run(domain.mlflow_run_id).data.params["method"] == "moco"


def test_a_domain_rung_refuses_another_method_than_its_encoders():
    moco_encoder = SimpleNamespace(arm="moco")  # an EncoderCheckpoint's arm, all the domain config is checked against
    assert _continued_config(PretrainConfig(method="moco", epochs=1), moco_encoder).method == "moco"
    with pytest.raises(LadderError, match="method='byol'.*method='moco'.*leave 'method' out of domain_pretraining"):
        _continued_config(PretrainConfig(method="byol"), moco_encoder)
