"""Image files in a folder that its metadata.csv does not list are not used: the ingest summary, the printed summary and
the validation report count them, name them by key with the command that names their files, and a setting refuses
them instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flytekit import workflow
from ingested import image_keys, ingest
from PIL import Image

from sslflow.config import IngestConfig, ValidationConfig
from sslflow.data.image_keys import paths_of_keys
from sslflow.data.sources import fingerprint_source
from sslflow.data.types import SourceError
from sslflow.reporting.dataset_report import dataset_summary
from sslflow.tracking.runs import start_parent_run
from sslflow.tracking.store import client
from tasks.ingest import source_fingerprint
from tasks.shared import Dataset
from tasks.validate import validate
from workflows.ingest import ingest as ingest_workflow

CONFIG = IngestConfig(image_size=16)
UNLISTED = ["extra.png", "later/scan.tif", "zz.jpg"]


def _folder(root: Path) -> Path:
    """img0..img3.png listed in metadata.csv; three more image files and a text file that it does not list."""
    (root / "later").mkdir(parents=True)
    for index, name in enumerate(["img0.png", "img1.png", "img2.png", "img3.png", *UNLISTED]):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (20, 20), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image, not counted\n")
    (root / "metadata.csv").write_text("path,label\nimg0.png,a\nimg1.png,b\nimg2.png,a\nimg3.png,b\n")
    return root


def test_files_metadata_does_not_list_are_counted_by_key_with_the_command_that_names_them(tmp_path):
    root = _folder(tmp_path / "scans")
    manifest, _, summary = ingest(root, CONFIG)
    assert len(manifest) == 4
    keys = image_keys(UNLISTED)
    assert summary["unlisted_files"] == {"count": 3, "keys": keys}
    (warning,) = [text for text in summary["warnings"] if "not listed" in text]
    assert all(key in warning for key in keys) and "python -m sslflow.data.image_keys <source> <key>..." in warning
    assert "unlisted_files='refuse'" in warning
    assert not any(path in json.dumps(summary) for path in UNLISTED)  # by key: no path leaves ingest
    assert paths_of_keys(str(root), keys) == dict(zip(keys, UNLISTED))  # the command names their files
    printed = dataset_summary("scans", 4, "sha", summary, "run", "sqlite:///x")
    assert (
        "not listed in metadata.csv, not used: 3 image file(s)" in printed
        and json.loads(printed.splitlines()[-1])["unlisted_files"] == 3
    )


def test_a_setting_refuses_them_instead(tmp_path):
    root = _folder(tmp_path / "scans")
    with pytest.raises(SourceError) as caught:
        ingest(root, IngestConfig(image_size=16, unlisted_files="refuse"))
    message = str(caught.value)
    assert (
        "3 image file(s) are not listed in its metadata.csv" in message
        and "'extra.png', 'later/scan.tif', 'zz.jpg'" in message
    )
    assert message.endswith("or set IngestConfig.unlisted_files='warn' to go on without them")


def test_adding_an_unlisted_file_changes_the_fingerprint(tmp_path):
    """Else a cached ingest would go on reporting the files it counted before."""
    root = _folder(tmp_path / "scans")
    before = fingerprint_source(str(root))
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(root / "new.png")
    assert fingerprint_source(str(root)) != before


@workflow
def ingest_and_validate(source: str, config: IngestConfig, parent_run_id: str) -> Dataset:
    dataset = ingest_workflow(
        source=source, fingerprint=source_fingerprint(source=source), config=config, parent_run_id=parent_run_id
    )
    return validate(dataset=dataset, config=ValidationConfig(), label_fractions=[], parent_run_id=parent_run_id)


def test_the_validation_report_counts_them(tmp_path):
    root = _folder(tmp_path / "scans")
    run_id = start_parent_run("test-unlisted", {})
    ingest_and_validate(source=str(root), config=CONFIG, parent_run_id=run_id)
    stage_runs = client().search_runs(
        [client().get_run(run_id).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    validation_run = next(run for run in stage_runs if run.data.tags["sslflow.stage"].startswith("validate:"))
    report = json.loads(
        Path(client().download_artifacts(validation_run.info.run_id, "validation.json", str(tmp_path))).read_text()
    )
    assert report["unlisted_files"] == {"count": 3, "keys": image_keys(UNLISTED)}
    assert any("3 image file(s) in the source are not listed" in warning for warning in report["warnings"])
    assert validation_run.data.metrics["unlisted_files"] == 3
