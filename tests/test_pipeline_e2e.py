"""The whole ssl_pipeline on a small slice of the real data: fresh, cached, new fine-tuning settings, another MLflow
store. The Elastic tasks run in this process (tests/inprocess_elastic.py): the launcher runs in the pods of
test_pipeline_pods and test_pods, and locally in test_elastic."""

from __future__ import annotations

import time

import mlflow
from flytekit.core.local_cache import LocalTaskCache
from inprocess_elastic import with_inprocess_elastic
from live_mlflow import mlflow_at
from mlflow.tracking import MlflowClient

from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri
from workflows.pipeline import ssl_pipeline

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
)


def _stage_runs() -> list[str]:
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return sorted(run.data.tags.get("sslflow.stage", "PARENT") for run in runs)


def test_pipeline_runs_caches_and_reruns_only_what_changed(tmp_path, monkeypatch):
    # Its own MLflow store and an empty Flyte cache: other tests' cached tasks must not answer for ours.
    with_inprocess_elastic(monkeypatch)
    LocalTaskCache.clear()
    with mlflow_at(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}"):
        _run_three_times()
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


def _run_three_times() -> None:
    started = time.perf_counter()
    summary = ssl_pipeline(**SMALL)
    first_wall = time.perf_counter() - started
    assert "| simclr+micle | finetune | 1 (" in summary and "| pixels | linear | 1 (" in summary
    assert "Registered model: sslflow-mnist-5k version 1" in summary

    stages = _stage_runs()
    assert stages.count("PARENT") == 1
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
    _assert_pseudo_label_report()
    _assert_knn_probe_and_monitor()
    _assert_one_budget_and_stopping_rule()
    assert (
        sum(stage.startswith("finetune:") for stage in stages) == 8
    )  # pixels, scratch, {simclr, +domain, +micle} x {linear, finetune}
    champion = MlflowClient(tracking_uri()).get_model_version_by_alias("sslflow-mnist-5k", "champion")
    assert str(champion.version) == "1"
    model = mlflow.pytorch.load_model("models:/sslflow-mnist-5k@champion")
    assert model(__import__("torch").zeros(2, 1, 28, 28)).shape == (2, 10)

    started = time.perf_counter()
    assert ssl_pipeline(**SMALL) == summary
    cached_wall = time.perf_counter() - started
    assert _stage_runs() == stages, "a rerun with nothing changed must execute no task body"
    assert cached_wall < 0.5 * first_wall

    ssl_pipeline(
        **dict(SMALL, seeds=[1])
    )  # another fine-tuning seed: fine-tuning and what follows rerun, nothing before
    new_stages = _stage_runs()
    for stage in set(stages):
        added = new_stages.count(stage.replace("/seed=0", "/seed=1")) - stages.count(
            stage.replace("/seed=0", "/seed=1")
        )
        rerun = stage.startswith(("finetune:", "self_train", "evaluate", "register")) or stage == "PARENT"
        assert added == (1 if rerun else 0), (stage, added)


def _assert_knn_probe_and_monitor() -> None:
    """The evaluate run holds the kNN probe of each frozen pretrained encoder; each pretraining run a kNN accuracy per
    epoch."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    evaluate_run = client.search_runs([experiment], "tags.`sslflow.stage` = 'evaluate'")[0]
    assert "knn_probe.csv" in {item.path for item in client.list_artifacts(evaluate_run.info.run_id)}
    assert 0 <= evaluate_run.data.metrics["simclr_micle_knn_1_seed0_in_domain_accuracy"] <= 1
    micle_run = client.search_runs([experiment], "tags.`sslflow.stage` = 'pretrain_case_pairs'")[0]
    assert len(client.get_metric_history(micle_run.info.run_id, "knn_accuracy")) == 1  # one epoch


def _assert_one_budget_and_stopping_rule() -> None:
    """Every fully fine-tuned arm (scratch and each pretrained encoder) and the student log where they stopped; the
    fine-tuned arms at a fraction share one step budget."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    runs = [
        run
        for run in client.search_runs([experiment], max_results=1000)
        if run.data.tags.get("sslflow.stage", "").startswith("finetune:")
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
    student_run = client.search_runs([experiment], "tags.`sslflow.stage` = 'self_train:simclr+micle+student@1/seed=0'")[
        0
    ]
    assert student_run.data.metrics["best_step"] <= student_run.data.metrics["stopped_step"]


def _assert_pseudo_label_report() -> None:
    """The self_train stage run holds the pseudo-label quality report; the student's run its numbers."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    report_run = client.search_runs([experiment], "tags.`sslflow.stage` = 'self_train'")[0]
    artifacts = {item.path for item in client.list_artifacts(report_run.info.run_id)}
    assert {"pseudo_labels.md", "pseudo_labels.csv", "pseudo_labels_per_class.csv", "charts"} <= artifacts
    student_run = client.search_runs([experiment], "tags.`sslflow.stage` = 'self_train:simclr+micle+student@1/seed=0'")[
        0
    ]
    assert (
        0 <= student_run.data.metrics["pseudo_label_accuracy"] <= 1 and student_run.data.metrics["pseudo_labelled"] > 0
    )
