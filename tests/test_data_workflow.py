"""A folder of real photographs in mixed sizes, modes and formats ingests and validates; validate_data from the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
from flytekit import workflow
from PIL import Image

from sslflow.config import IngestConfig, ValidationConfig
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.tracking.runs import start_parent_run
from sslflow.tracking.store import client
from tasks.ingest import source_fingerprint
from tasks.shared import Dataset, ingest_summary, read_rows
from tasks.validate import validate
from workflows.ingest import ingest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path(sklearn.datasets.__file__).parent / "images"  # china.jpg, flower.jpg: 640x427 RGB photographs


# flytekit cannot convert an Annotated[Dataset, HashMethod] task output back when a task is called on its
# own, so these tests call the tasks through a workflow, as the pipeline does.
@workflow
def ingest_and_validate(source: str, config: IngestConfig, validation: ValidationConfig, parent_run_id: str) -> Dataset:
    dataset = ingest(
        source=source, fingerprint=source_fingerprint(source=source), config=config, parent_run_id=parent_run_id
    )
    return validate(dataset=dataset, config=validation, label_fractions=[], parent_run_id=parent_run_id)


@workflow
def ingest_only(source: str, config: IngestConfig, parent_run_id: str) -> Dataset:
    return ingest(
        source=source, fingerprint=source_fingerprint(source=source), config=config, parent_run_id=parent_run_id
    )


def write_photo_folder(root: Path) -> pd.DataFrame:
    """12 crops of two real photos, one per (mode, format) pair, two crops per case, two sites, some labels."""
    root.mkdir(parents=True, exist_ok=True)
    variants = [
        ("L", "png"),
        ("LA", "png"),
        ("RGB", "jpg"),
        ("RGBA", "tif"),
        ("P", "bmp"),
        ("I;16", "png"),
        ("CMYK", "jpg"),
        ("RGB", "bmp"),
        ("L", "tif"),
        ("I;16", "tif"),
        ("RGB", "png"),
        ("P", "png"),
    ]
    rows = []
    for i, (mode, suffix) in enumerate(variants):
        photo = "china" if i % 4 < 2 else "flower"
        with Image.open(PHOTOS / f"{photo}.jpg") as image:
            left, top = 150 + 20 * i, 120 + 10 * i  # inside the photo, not the flat sky
            crop = image.convert("RGB").crop((left, top, left + 60 + 15 * i, top + 40 + 9 * i))
        if mode == "I;16":
            converted = Image.fromarray(np.asarray(crop.convert("L"), dtype=np.uint16) * 257)  # full 16-bit range
        else:
            converted = crop.convert(mode)
        name = f"{photo}/{i:02d}-{mode.replace(';', '')}.{suffix}"
        (root / name).parent.mkdir(exist_ok=True)
        converted.save(root / name)
        rows.append(
            {
                "path": name,
                "case_id": f"case{i // 2}",
                "site": f"site-{i % 2}",
                "label": photo if i % 3 == 0 else "",
                "scanner": "x",
            }
        )
    metadata = pd.DataFrame(rows)
    metadata.to_csv(root / "metadata.csv", index=False)
    return metadata


def test_real_photos_of_mixed_sizes_and_modes_ingest_and_validate(tmp_path, monkeypatch):
    """... and validate renders its Deck without running `pip list` and `pip freeze` (flytekit's Dependencies deck):
    a task with a report starts no pip process."""
    metadata = write_photo_folder(tmp_path / "photos")
    commands = []
    check_output = subprocess.check_output
    monkeypatch.setattr(
        subprocess, "check_output", lambda args, **kw: commands.append(args) or check_output(args, **kw)
    )
    run_id = start_parent_run("test-photos", {})
    dataset = ingest_and_validate(
        source=str(tmp_path / "photos"),
        config=IngestConfig(image_size=32, channels=3),
        validation=ValidationConfig(),
        parent_run_id=run_id,
    )
    manifest, images = read_rows(dataset, lambda manifest: manifest["split"].notna())  # every row
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.uint8
    assert list(manifest["image_key"]) == [
        Pseudonyms().pseudonym("file", path) for path in metadata["path"]
    ]  # paths never reach the dataset
    assert set(manifest["mode"]) == {"L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK"}
    assert manifest["width"].nunique() == 12 and manifest["height"].nunique() == 12
    assert (manifest.groupby("case_id")["split"].nunique() == 1).all() and manifest["case_id"].nunique() == 6
    assert manifest["label"].notna().sum() == 4 and set(manifest["site"]) == {"site-0", "site-1"}
    assert "scanner" not in manifest.columns  # extra metadata columns are ignored
    assert all(images[i].std() > 10 for i in range(12))  # real image content survived every mode
    assert not [command for command in commands if "pip" in command], commands

    stage_runs = client().search_runs(
        [client().get_run(run_id).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    validation_run = next(run for run in stage_runs if run.data.tags["sslflow.stage"].startswith("validate:"))
    artifacts = {item.path for item in client().list_artifacts(validation_run.info.run_id)}
    assert {"validation.json", "validation.html"} <= artifacts
    report = json.loads(
        Path(client().download_artifacts(validation_run.info.run_id, "validation.json", str(tmp_path))).read_text()
    )
    assert (
        report["success"]
        and report["case_sizes"]["multi_image_cases"] == 6
        and report["case_sizes"]["cases_by_size"] == {"2": 6}
    )
    assert "ingest_summary.json" in {item.path for item in client().list_artifacts(dataset.mlflow_run_id)}


def test_reingesting_with_one_added_file_decodes_only_that_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "growing"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(100 + i).integers(0, 256, (20, 20), dtype=np.uint8)).save(
            folder / f"img{i}.png"
        )
    run_id = start_parent_run("test-incremental", {})
    first = ingest_summary(ingest_only(source=str(folder), config=IngestConfig(image_size=16), parent_run_id=run_id))
    assert first["read"]["decoded"] == 5 and first["images"] == 5
    Image.fromarray(np.random.default_rng(105).integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / "img5.png")
    second = ingest_summary(ingest_only(source=str(folder), config=IngestConfig(image_size=16), parent_run_id=run_id))
    assert second["read"] == {**second["read"], "listed": 6, "decoded": 1, "decode_cache_hits": 5}
    assert second["images"] == 6


def _pyflyte_validate_data(source: Path, *options: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "pyflyte"),
        "run",
        "workflows/data.py",
        "validate_data",
        "--source",
        str(source),
        *options,
    ]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"}
    )


@pytest.mark.parametrize(
    "case",
    ["good", "failing_check", "undecodable_file"],
)
def test_pyflyte_validate_data_exit_code_and_message(tmp_path, case):
    folder = tmp_path / case
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(200 + i).integers(0, 256, (24, 24 + i), dtype=np.uint8)).save(
            folder / f"img{i}.png"
        )
    if case == "failing_check":
        Image.fromarray(np.zeros((4, 30), dtype=np.uint8)).save(folder / "sliver.png")  # 4 px < min_image_side
    if case == "undecodable_file":
        (folder / "scan9.png").write_text("this is not an image")
    result = _pyflyte_validate_data(folder)
    output = result.stdout + result.stderr
    if case == "good":
        assert result.returncode == 0, output
        assert "is valid: 4 images" in result.stdout
    elif case == "failing_check":
        assert result.returncode != 0
        sliver = Pseudonyms().pseudonym(
            "file", "sliver.png"
        )  # images are named by key after ingest, with how to find the file
        assert "expect_column_values_to_be_between column 'height'" in output and f"{sliver}: height=4" in output
        assert "python -m sslflow.data.image_keys" in output
    else:
        assert result.returncode != 0
        assert "scan9.png: not a PNG, JPEG, TIFF, BMP image" in output
