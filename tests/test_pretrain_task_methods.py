"""The pretraining task with another method than SimCLR: the encoder names its arm, and every epoch's kNN
accuracy on the val split reaches MLflow beside the loss."""

from __future__ import annotations

import mlflow
from flytekit import workflow

from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.tracking.runs import start_parent_run
from tasks.ingest import source_fingerprint
from tasks.pretrain import pretrain_simclr
from tasks.shared import EncoderCheckpoint
from workflows.ingest import ingest


@workflow
def _moco_generic_rung(run_id: str) -> EncoderCheckpoint:
    dataset = ingest(
        source="mnist-5k",
        fingerprint=source_fingerprint(source="mnist-5k"),
        config=IngestConfig(max_images=300),
        parent_run_id=run_id,
    )
    config = PretrainConfig(method="moco", epochs=2, batch_size=64, method_settings={"queue_size": 128})
    return pretrain_simclr(dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)


def test_moco_pretraining_task_logs_knn_accuracy_per_epoch():
    encoder = _moco_generic_rung(run_id=start_parent_run("methods-task-test", {}))
    assert encoder.arm == "moco"
    client = mlflow.tracking.MlflowClient()
    knn = client.get_metric_history(encoder.mlflow_run_id, "knn_accuracy")
    assert sorted(m.step for m in knn) == [0, 1] and all(0.0 <= m.value <= 1.0 for m in knn)
    assert len(client.get_metric_history(encoder.mlflow_run_id, "loss")) == 2
    assert client.get_run(encoder.mlflow_run_id).data.params["method"] == "moco"
