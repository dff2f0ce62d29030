"""benchmarks/same_outputs.py: two pipeline runs in MLflow stores compared stage by stage."""

from __future__ import annotations

from pathlib import Path

import mlflow

from benchmarks.same_outputs import compare, stage_runs


def _store(folder: Path, loss: float, checkpoint: bytes, seconds: float) -> Path:
    """A store with an ssl_pipeline parent run and one stage run under it (MLflow's own schema)."""
    folder.mkdir()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("sslflow", artifact_location=str(folder / "mlartifacts"))
    parent = client.create_run(experiment, run_name="ssl_pipeline").info.run_id
    stage = client.create_run(experiment, run_name="pretrain_simclr", tags={"mlflow.parentRunId": parent})
    client.log_metric(stage.info.run_id, "loss", loss)
    client.log_metric(stage.info.run_id, "images_per_second", 1000 / seconds)
    (folder / "encoder.pt").write_bytes(checkpoint)
    client.log_artifact(stage.info.run_id, str(folder / "encoder.pt"), "checkpoint")
    client.set_terminated(stage.info.run_id)
    client.set_terminated(parent)
    return folder / "mlflow.db"


def test_a_changed_weight_is_named_and_timings_are_left_out(tmp_path):
    old = stage_runs(_store(tmp_path / "a", loss=0.5, checkpoint=b"weights", seconds=2.0), None)
    changed = stage_runs(_store(tmp_path / "b", loss=0.5, checkpoint=b"other weights", seconds=3.0), None)

    assert set(old) == {"ssl_pipeline", "pretrain_generic"}  # an old task name maps to today's
    assert compare(old, old)["stages_identical"] == 2
    result = compare(old, changed)
    assert result["stages_identical"] == 1
    assert result["stages"]["pretrain_generic"] == {
        "metrics": [],
        "artifacts": ["checkpoint/encoder.pt"],
        "metrics_compared": 1,
        "artifacts_compared": 1,
    }
