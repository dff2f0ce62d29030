"""The whole ssl_pipeline on a user's folder: images of mixed sizes, modes and formats, metadata.csv with
real case ids (several images per case, some with one), two sites and labels on part of the images."""

from __future__ import annotations

import numpy as np
import pandas as pd
from flytekit.core.local_cache import LocalTaskCache
from inprocess_elastic import with_inprocess_elastic
from live_mlflow import mlflow_at
from mlflow.tracking import MlflowClient
from PIL import Image

from ssl_models.finetuning import FinetuneConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import EvaluationConfig, IngestConfig
from sslflow.data.sources.builtin import read_mnist_5k
from sslflow.registry.names import default_model_name
from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri
from workflows.pipeline import ssl_pipeline

MODES = [("L", "png"), ("RGB", "jpg"), ("RGBA", "tif"), ("P", "bmp"), ("I;16", "png"), ("LA", "png")]


def write_scan_folder(root, count=360) -> pd.DataFrame:
    """MNIST digits saved as 'scans' of 20-44 px in six modes; cases of 1-3 images; labels on two thirds."""
    digits = read_mnist_5k()
    rows = []
    for i in range(count):
        source_row = (i * 137) % len(digits.labels)  # mnist_5k.csv is sorted by label: spread the picks
        pixels = digits.pixels[source_row, 0]
        mode, suffix = MODES[i % len(MODES)]
        side = 20 + (i * 7) % 25
        image = Image.fromarray(pixels).resize((side, side))
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257) if mode == "I;16" else image.convert(mode)
        path = f"site-{i % 2}/scan{i:04d}.{suffix}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / path)
        case = f"patient{i // 3}" if i % 9 else f"solo{i}"  # most cases have 2-3 images, some only one
        rows.append(
            {
                "path": path,
                "case_id": case,
                "site": f"site-{i % 2}",
                "label": digits.labels[source_row] if i % 3 else "",
            }
        )
    metadata = pd.DataFrame(rows)
    metadata.to_csv(root / "metadata.csv", index=False)
    return metadata


def test_pipeline_runs_on_a_user_folder_with_real_cases(tmp_path, monkeypatch):
    with_inprocess_elastic(monkeypatch)  # its subject is the source; the Elastic launcher: test_elastic, test_pods
    folder = tmp_path / "scans"
    write_scan_folder(folder)
    LocalTaskCache.clear()
    with mlflow_at(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}"):
        summary = ssl_pipeline(
            generic_source="fashion-mnist",
            domain_source=str(folder),
            shift_source="optdigits",
            generic_ingest=IngestConfig(max_images=100),
            domain_ingest=IngestConfig(),
            shift_ingest=IngestConfig(all_test=True, max_images=200),
            generic_pretraining=PretrainConfig(epochs=1, batch_size=64),
            domain_pretraining=PretrainConfig(epochs=1, batch_size=64),
            finetune=FinetuneConfig(epochs=1, min_steps=3),
            label_fractions=[1.0],
            evaluation=EvaluationConfig(severities=(3,)),  # 7 evaluation sets, not 17
        )
        assert (
            "| simclr+micle | finetune | 1 (" in summary
            and f"Registered model: {default_model_name(str(folder))} version 1" in summary
        )
        client = MlflowClient(tracking_uri())
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
        (micle,) = client.search_runs([experiment], "tags.`sslflow.stage` = 'pretrain_case_pairs'")
        assert micle.data.metrics["cases"] < micle.data.metrics["images"]  # real cases: several images each
        assert micle.data.metrics["single_image_cases"] > 0  # and some that fall back to two augmentations
        assert "case_ids" not in micle.data.tags  # not PROXY: the folder has real case ids
        (evaluation,) = client.search_runs([experiment], "tags.`sslflow.stage` = 'evaluate'")
        results = pd.read_csv(client.download_artifacts(evaluation.info.run_id, "results.csv"))
        assert {"in_domain/site=site-0", "in_domain/site=site-1", "shift", "jpeg@3"} <= set(results["eval_set"])
