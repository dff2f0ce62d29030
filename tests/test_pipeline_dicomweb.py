"""The whole ssl_pipeline from a DICOMweb archive (a real Orthanc, tests/orthanc.py): a PACS export stored by
STOW-RS, labels in a CSV keyed by SOPInstanceUID, the domain and shift sources archive queries. No identifier of
the export (names, IDs, dates, UIDs) may reach the dataset folders, Flyte's cache (ingest's plan excepted),
mlflow.db, mlartifacts or the captured output. Skipped, saying why, where Orthanc cannot run."""

from __future__ import annotations

import pandas as pd
import pydicom
import pytest
from dicom_files import PLANTED, write_pacs_folder
from flytekit.core.local_cache import LocalTaskCache
from inprocess_elastic import with_inprocess_elastic
from live_mlflow import mlflow_at
from mlflow.tracking import MlflowClient
from orthanc import MISSING, orthanc_server
from test_dicom import assert_no_identifier, flyte_cache_entries

from ssl_models.finetuning import FinetuneConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.data.chunks import plan_chunks
from sslflow.data.pseudonyms import KEY_ENV
from sslflow.data.sources.dicomweb_http import PASSWORD_ENV, USERNAME_ENV
from sslflow.registry.names import default_model_name
from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri
from workflows.pipeline import ssl_pipeline

pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def test_pipeline_from_an_archive_query_uses_header_cases_and_shows_no_identifier(tmp_path, monkeypatch, capfd):
    with_inprocess_elastic(monkeypatch)  # its subject is the source; the Elastic launcher: test_elastic, test_pods
    monkeypatch.setenv(KEY_ENV, "pipeline-dicomweb-key-0123456789abcdef")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # Flyte's local cache, searched below
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "ingest-cache"))
    monkeypatch.setenv("FLYTE_SDK_LOCAL_SANDBOX", str(tmp_path / "sandbox"))
    monkeypatch.setenv(USERNAME_ENV, "reader")
    monkeypatch.setenv(PASSWORD_ENV, "pipeline-reader-password")
    export = tmp_path / "export"
    images = write_pacs_folder(export, copies=6, patients=12, planted=PLANTED)  # and a structured report, an RT plan
    files = sorted(path for path in export.rglob("*") if path.is_file() and path.name not in ("DICOMDIR", "README.txt"))
    uids = [str(pydicom.dcmread(export / path, stop_before_pixels=True).SOPInstanceUID) for path in images["path"]]
    pd.DataFrame({"sop_instance_uid": uids, "label": [index % 2 for index in range(len(uids))]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    if LocalTaskCache._initialized:  # Flyte's cache under this test's HOME; the session's comes back afterwards
        monkeypatch.setattr(LocalTaskCache, "_cache", LocalTaskCache._cache)
    monkeypatch.setattr(LocalTaskCache, "_initialized", False)
    LocalTaskCache.clear()
    domain, shift = IngestConfig(train_fraction=0.5, val_fraction=0.1, gate_fraction=0.2), IngestConfig(all_test=True)
    with (
        orthanc_server(tmp_path / "orthanc", users={"reader": "pipeline-reader-password"}) as archive,
        mlflow_at(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}"),
    ):
        archive.store(files)
        source = archive.uri(f"metadata={tmp_path / 'labels.csv'}")  # every study
        summary = ssl_pipeline(
            generic_source="fashion-mnist",
            domain_source=source,
            shift_source=source,
            generic_ingest=IngestConfig(max_images=100),
            domain_ingest=domain,
            shift_ingest=shift,
            generic_pretraining=PretrainConfig(epochs=1, batch_size=32),
            domain_pretraining=PretrainConfig(epochs=1, batch_size=16),
            finetune=FinetuneConfig(epochs=1, min_steps=2),
            label_fractions=[1.0],
        )
        assert f"Registered model: {default_model_name(source)} version 1" in summary
        client = MlflowClient(tracking_uri())
        (micle,) = client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id],
            "tags.`sslflow.stage` = 'pretrain_case_pairs'",
        )
        assert (
            1 < micle.data.metrics["cases"] < micle.data.metrics["images"]
        )  # the header's patients: several images each
        plans = [*plan_chunks(source, domain), *plan_chunks(source, shift)]  # chunk documents (dicts)
    captured = capfd.readouterr()
    assert_no_identifier(
        [summary, captured.out, captured.err],
        [tmp_path / "mlflow.db", tmp_path / "mlartifacts", tmp_path / "sandbox", tmp_path / "ingest-cache"],
        folder=export,
        blobs=flyte_cache_entries(tmp_path / "home", plans),
        plans=plans,
    )
