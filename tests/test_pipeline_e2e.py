"""The whole ssl_pipeline on a small slice of the real data: fresh while another `pyflyte run` of it (other inputs)
writes to the same MLflow store and Flyte cache, then cached, with new fine-tuning settings, against another MLflow
store. The Elastic tasks run in this process (tests/inprocess_elastic.py) and in the other's: the launcher runs in the
pods of test_pipeline_pods and test_pods, and locally in test_elastic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from flytekit.core.local_cache import LocalTaskCache
from inprocess_elastic import with_inprocess_elastic
from live_mlflow import mlflow_at
from mlflow.tracking import MlflowClient

from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import EvaluationConfig, IngestConfig
from sslflow.registry.aliases import CHAMPION, COMPLETE, STATE_TAG
from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri
from workflows.pipeline import ssl_pipeline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "sslflow-mnist-5k"  # both pipelines' domain source is mnist-5k: one registered model, two gates
OTHER_INPUTS = {  # tiny, and different from SMALL's at every cached step: the two share the cache file, not its entries
    "generic_ingest": {"max_images": 160},
    "domain_ingest": {"proxy_cases": True, "max_images": 310},
    "shift_ingest": {"all_test": True, "max_images": 130},
    "generic_pretraining": {"epochs": 1, "batch_size": 64},
    "domain_pretraining": {"epochs": 1, "batch_size": 64},
    "finetune": {"epochs": 1, "min_steps": 2, "head_warmup_steps": 0},
    "label_fractions": [1.0],
    "evaluation": {"severities": [2]},
}

SMALL = dict(
    generic_ingest=IngestConfig(max_images=200),
    domain_ingest=IngestConfig(proxy_cases=True, max_images=600),
    generic_pretraining=PretrainConfig(epochs=1, batch_size=64),
    domain_pretraining=PretrainConfig(epochs=1, batch_size=64),
    finetune=FinetuneConfig(epochs=1, min_steps=3),
    label_fractions=[1.0],
    self_train=SelfTrainConfig(
        steps=3, confidence_threshold=0.0, max_label_fraction=1.0
    ),  # a 3-step student is confident about little
    evaluation=EvaluationConfig(severities=(2,)),  # 7 evaluation sets, not 17
)


def _stage_runs(parent: str | None = None) -> list[str]:
    """The stage of every run in the store (PARENT for a pipeline's own run), or of ``parent``'s stage runs only."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    if parent is not None:
        runs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent]
    return sorted(run.data.tags.get("sslflow.stage", "PARENT") for run in runs)


def _pipeline_runs() -> list:
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    return client.search_runs([experiment], "tags.`sslflow.kind` = 'pipeline'", max_results=1000)


def _check_the_two_pipelines(summary: str, other_output: str) -> str:
    """Both pipelines finished with their own runs and model versions, their gates one after the other; ours's run id
    (in its summary)."""
    parents = _pipeline_runs()
    assert len(parents) == 2 and all(run.info.status == "FINISHED" for run in parents)
    (ours,) = [run.info.run_id for run in parents if run.info.run_id in summary]
    assert any(run.info.run_id in other_output for run in parents if run.info.run_id != ours)
    for parent in parents:
        assert {"register", "pretrain_generic"} <= set(_stage_runs(parent.info.run_id))
    client = MlflowClient(tracking_uri())
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(v.tags["pipeline_run_id"] for v in versions) == sorted(run.info.run_id for run in parents)
    assert all(v.tags[STATE_TAG] == COMPLETE for v in versions)
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version in {v.version for v in versions}
    # the two gates ran one after the other: one saw no champion, the other was compared with it
    assert sorted(v.tags["gate.champion_version"] for v in versions) in (["", "1"], ["", "2"])
    return ours


def _start_other_pipeline(store: str, log: Path) -> subprocess.Popen:
    """`pyflyte run` of ssl_pipeline on OTHER_INPUTS (its Elastic tasks in its process: tests/inprocess_elastic.py),
    with this process's HOME (Flyte's local cache) and sandbox and the MLflow ``store``."""
    command = [sys.executable, str(Path(__file__).with_name("inprocess_elastic.py")), "run"]
    command += ["workflows/pipeline.py", "ssl_pipeline"]
    for name, value in OTHER_INPUTS.items():
        command += [f"--{name}", json.dumps(value)]
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_REGISTRY_URI": store,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    with open(log, "w") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)


def test_pipeline_runs_beside_another_caches_and_reruns_only_what_changed(tmp_path, monkeypatch):
    # Its own MLflow store and an empty Flyte cache: other tests' cached tasks must not answer for ours.
    with_inprocess_elastic(monkeypatch)
    LocalTaskCache.clear()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = _start_other_pipeline(store, tmp_path / "other.log")
    with mlflow_at(monkeypatch, store):
        _run_three_times(other, tmp_path / "other.log")
    with mlflow_at(monkeypatch, f"sqlite:///{tmp_path / 'another-store.db'}"):
        _rerun_against_another_store()


def _rerun_against_another_store() -> None:
    """A switch of MLFLOW_TRACKING_URI records the pipeline in the new store, and retrains nothing."""
    summary = ssl_pipeline(**SMALL)
    assert f"({tracking_uri()})" in summary and "another-store.db" in summary
    assert _stage_runs() == ["PARENT", "register"], "training stages are cache hits: nothing but the record is new"
    client = MlflowClient(tracking_uri())
    parent = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id], "tags.`sslflow.kind` = 'pipeline'"
    )[0]
    assert {"results.csv", "results.md"} <= {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert parent.data.metrics["simclr_micle_finetune_1_seed0_in_domain_accuracy"] > 0
    assert parent.data.tags["registry.version"] == "1"
    assert str(client.get_model_version_by_alias("sslflow-mnist-5k", "champion").version) == "1"


def _run_three_times(other: subprocess.Popen, other_log: Path) -> None:
    started = time.perf_counter()
    summary = ssl_pipeline(**SMALL)
    first_wall = time.perf_counter() - started
    assert "| simclr+micle | finetune | 1 (" in summary and "| pixels | linear | 1 (" in summary
    assert f"Registered model: {MODEL_NAME} version " in summary
    other.wait(timeout=600)
    assert other.returncode == 0, f"the other pipeline failed:\n{other_log.read_text()[-4000:]}"
    parent = _check_the_two_pipelines(summary, other_log.read_text())

    stages = _stage_runs(parent)
    for stage in (
        "ingest:fashion-mnist",
        "ingest:mnist-5k",
        "ingest:optdigits",
        "validate:mnist-5k",
        "pretrain_generic",
        "pretrain_domain",
        "pretrain_case_pairs",
        "self_train:simclr+micle+student@1/seed=0",
        "self_train",
        "evaluate",
        "register",
    ):
        assert stage in stages, stage
    assert "| simclr+micle+student | finetune | 1 (" in summary  # the student is an arm of the evaluation
    _assert_pseudo_label_report(parent)
    _assert_knn_probe_and_monitor(parent)
    _assert_one_budget_and_stopping_rule(parent)
    assert (
        sum(stage.startswith("finetune:") for stage in stages) == 8
    )  # pixels, scratch, {simclr, +domain, +micle} x {linear, finetune}
    model = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@champion")
    assert model(__import__("torch").zeros(2, 1, 28, 28)).shape == (2, 10)

    every_stage = _stage_runs()
    started = time.perf_counter()
    assert ssl_pipeline(**SMALL) == summary  # the cache two processes wrote at once is intact
    cached_wall = time.perf_counter() - started
    assert _stage_runs() == every_stage, "a rerun with nothing changed must execute no task body"
    assert cached_wall < 0.5 * first_wall

    ssl_pipeline(
        **dict(SMALL, seeds=[1])
    )  # another fine-tuning seed: fine-tuning and what follows rerun, nothing before
    new_stages = _stage_runs()
    for stage in set(stages):
        added = new_stages.count(stage.replace("/seed=0", "/seed=1")) - every_stage.count(
            stage.replace("/seed=0", "/seed=1")
        )
        rerun = stage.startswith(("finetune:", "self_train", "evaluate", "register"))
        assert added == (1 if rerun else 0), (stage, added)
    assert len(_pipeline_runs()) == 3  # and a pipeline run of its own


def _stage_run(parent: str, stage: str):
    """The run of ``stage`` of the pipeline run ``parent``."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    query = f"tags.`sslflow.stage` = '{stage}' and tags.mlflow.parentRunId = '{parent}'"
    (run,) = client.search_runs([experiment], query)
    return run


def _assert_knn_probe_and_monitor(parent: str) -> None:
    """The evaluate run holds the kNN probe of each frozen pretrained encoder; each pretraining run a kNN accuracy per
    epoch."""
    client = MlflowClient(tracking_uri())
    evaluate_run = _stage_run(parent, "evaluate")
    assert "knn_probe.csv" in {item.path for item in client.list_artifacts(evaluate_run.info.run_id)}
    assert 0 <= evaluate_run.data.metrics["simclr_micle_knn_1_seed0_in_domain_accuracy"] <= 1
    micle_run = _stage_run(parent, "pretrain_case_pairs")
    assert len(client.get_metric_history(micle_run.info.run_id, "knn_accuracy")) == 1  # one epoch


def _assert_one_budget_and_stopping_rule(parent: str) -> None:
    """Every fully fine-tuned arm (scratch and each pretrained encoder) and the student log where they stopped; the
    fine-tuned arms at a fraction share one step budget."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    runs = [
        run
        for run in client.search_runs([experiment], max_results=1000)
        if run.data.tags.get("sslflow.stage", "").startswith("finetune:")
        and run.data.tags.get("mlflow.parentRunId") == parent
    ]
    finetuned = [run for run in runs if "/finetune@" in run.data.tags["sslflow.stage"]]
    assert (
        len(finetuned) == 4 and len({run.data.metrics["budget_steps"] for run in finetuned}) == 1
    )  # scratch + 3 pretrained
    for run in finetuned:
        assert run.data.metrics["best_step"] <= run.data.metrics["stopped_step"] <= run.data.metrics["budget_steps"]
        assert (
            run.data.metrics["best_val_accuracy"] == run.data.metrics["val_accuracy"]
        )  # the best weights are the ones kept
    student_run = _stage_run(parent, "self_train:simclr+micle+student@1/seed=0")
    assert student_run.data.metrics["best_step"] <= student_run.data.metrics["stopped_step"]


def _assert_pseudo_label_report(parent: str) -> None:
    """The self_train stage run holds the pseudo-label quality report; the student's run its numbers."""
    client = MlflowClient(tracking_uri())
    report_run = _stage_run(parent, "self_train")
    artifacts = {item.path for item in client.list_artifacts(report_run.info.run_id)}
    assert {"pseudo_labels.md", "pseudo_labels.csv", "pseudo_labels_per_class.csv", "charts"} <= artifacts
    student_run = _stage_run(parent, "self_train:simclr+micle+student@1/seed=0")
    assert (
        0 <= student_run.data.metrics["pseudo_label_accuracy"] <= 1 and student_run.data.metrics["pseudo_labelled"] > 0
    )
