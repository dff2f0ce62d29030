"""The whole ssl_pipeline on a PACS export: DICOM files with identifiers in their headers and their paths, labels
from a metadata.csv (no case or site there: both from the headers), evaluated per (pseudonymised) institution. No
identifier may reach the dataset folders, the decode cache, Flyte's cache (ingest's plan excepted), mlflow.db,
mlartifacts or the captured output."""

from __future__ import annotations

import pandas as pd
from dicom_files import PLANTED, write_pacs_folder
from flytekit.core.local_cache import LocalTaskCache
from inprocess_elastic import with_inprocess_elastic
from live_mlflow import mlflow_at
from mlflow.tracking import MlflowClient
from test_dicom import assert_no_identifier, flyte_cache_entries

from ssl_models.finetuning import FinetuneConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.data.chunks import plan_chunks
from sslflow.data.pseudonyms import KEY_ENV, Pseudonyms
from sslflow.registry.names import default_model_name
from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri
from workflows.pipeline import ssl_pipeline


def test_pipeline_on_a_pacs_export_uses_header_cases_and_sites_and_shows_no_identifier(tmp_path, monkeypatch, capfd):
    with_inprocess_elastic(monkeypatch)  # its subject is the source; the Elastic launcher: test_elastic, test_pods
    key = "pipeline-test-key-0123456789abcdef"
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # Flyte's local cache, searched below
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "ingest-cache"))
    monkeypatch.setenv("FLYTE_SDK_LOCAL_SANDBOX", str(tmp_path / "sandbox"))
    folder = tmp_path / "pacs"
    files = write_pacs_folder(folder, copies=6, patients=12, planted=PLANTED, identifying_paths=True)
    files.assign(label=[index % 2 for index in range(len(files))])[["path", "label"]].to_csv(
        folder / "metadata.csv", index=False
    )
    if LocalTaskCache._initialized:  # Flyte's cache under this test's HOME; the session's comes back afterwards
        monkeypatch.setattr(LocalTaskCache, "_cache", LocalTaskCache._cache)
    monkeypatch.setattr(LocalTaskCache, "_initialized", False)
    LocalTaskCache.clear()
    domain, shift = IngestConfig(train_fraction=0.5, val_fraction=0.1, gate_fraction=0.2), IngestConfig(all_test=True)
    with mlflow_at(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}"):
        summary = ssl_pipeline(
            generic_source="fashion-mnist",
            domain_source=str(folder),
            shift_source=str(folder),
            # 12 patients: with the default 0.7 / 0.1 / 0.1 none of them hashes into the test split,
            # so wider gate and test shares
            generic_ingest=IngestConfig(max_images=100),
            domain_ingest=domain,
            shift_ingest=shift,
            generic_pretraining=PretrainConfig(epochs=1, batch_size=32),
            domain_pretraining=PretrainConfig(epochs=1, batch_size=16),
            finetune=FinetuneConfig(epochs=1, min_steps=2),
            label_fractions=[1.0],
        )
        assert f"Registered model: {default_model_name(str(folder))} version 1" in summary
        client = MlflowClient(tracking_uri())
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
        (micle,) = client.search_runs([experiment], "tags.`sslflow.stage` = 'pretrain_case_pairs'")
        # the header's patients (those of the train and val splits): several images each
        assert (
            1 < micle.data.metrics["cases"] <= files["patient"].nunique()
            and micle.data.metrics["cases"] < micle.data.metrics["images"]
        )
        assert "case_ids" not in micle.data.tags  # not PROXY
        (evaluation,) = client.search_runs([experiment], "tags.`sslflow.stage` = 'evaluate'")
        results = pd.read_csv(client.download_artifacts(evaluation.info.run_id, "results.csv"))
        sites = {
            f"in_domain/site={Pseudonyms(key).pseudonym('site', name)}" for name in ("North Hospital", "South Clinic")
        }
        assert sites <= set(results["eval_set"])  # institutions are known by pseudonyms
    captured = capfd.readouterr()
    plans = [*plan_chunks(str(folder), domain), *plan_chunks(str(folder), shift)]  # chunk documents (dicts)
    assert_no_identifier(
        [summary, captured.out, captured.err],
        [tmp_path / "mlflow.db", tmp_path / "mlartifacts", tmp_path / "sandbox", tmp_path / "ingest-cache"],
        folder=folder,
        blobs=flyte_cache_entries(tmp_path / "home", plans),
        plans=plans,
    )
