"""benchmarks/stage_times.py: the time per stage of the newest pipeline run, read from its MLflow store."""

import time

from mlflow.tracking import MlflowClient

from benchmarks.stage_times import PARENT_TAG, STAGE_TAG, newest_parent_stages, stage_kind


def test_stage_kinds_group_fine_tunes_by_probe():
    assert stage_kind("finetune:simclr+micle/linear@0.1/seed=2") == "finetune (linear)"
    assert stage_kind("finetune:scratch/finetune@1/seed=0") == "finetune (finetune)"
    assert (
        stage_kind("ingest:mnist-5k") == "ingest"
        and stage_kind("self_train:simclr+micle+student@0.01/seed=0") == "self_train"
    )
    assert stage_kind("evaluate") == "evaluate"


def _finished_run(
    client: MlflowClient, experiment: str, stage: str, parent: str | None, start_ms: int, seconds: float
) -> str:
    tags = {STAGE_TAG: stage, "mlflow.parentRunId": parent} if parent else dict([PARENT_TAG])
    run = client.create_run(experiment, start_time=start_ms, tags=tags)
    client.set_terminated(run.info.run_id, end_time=start_ms + int(seconds * 1000))
    return run.info.run_id


def test_only_the_newest_parent_runs_stages_are_timed(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("sslflow")
    now = int(time.time() * 1000)
    old = _finished_run(client, experiment, "ssl_pipeline", None, now - 100_000, 50)
    _finished_run(client, experiment, "evaluate", old, now - 90_000, 30)
    new = _finished_run(client, experiment, "ssl_pipeline", None, now, 20)
    _finished_run(client, experiment, "evaluate", new, now + 1_000, 4.5)
    _finished_run(client, experiment, "finetune:simclr/linear@1/seed=0", new, now + 6_000, 2)
    parent, stages = newest_parent_stages(client)
    assert parent == {"run_id": new, "seconds": 20.0}
    assert sorted(stages) == [("evaluate", 4.5), ("finetune:simclr/linear@1/seed=0", 2.0)]
