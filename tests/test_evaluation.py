import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flytekit import FlyteContextManager
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from ingested import write_arrays
from mlflow.tracking import MlflowClient

from ssl_models.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ssl_models.encoders import build_encoder
from ssl_models.heads import Classifier
from ssl_models.metrics import classification_metrics, expected_calibration_error, one_vs_rest_auc, per_class_accuracy
from sslflow.config import EvaluationConfig
from sslflow.data.manifest import MANIFEST_COLUMNS
from sslflow.data.sources.builtin import read_mnist_5k
from sslflow.evaluation import evaluation_sets
from sslflow.reporting.charts import EMBEDDING_MIN_POINTS, embedding_figure, report_figures, umap_points
from sslflow.reporting.html import evaluation_html
from sslflow.reporting.tables import corruption_markdown, effect_lines, results_markdown
from sslflow.tracking.runs import start_parent_run
from tasks.evaluate import evaluate
from tasks.shared import Dataset, FinetunedModel

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_metrics_on_a_hand_made_example():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2])
    metrics = classification_metrics(probabilities, labels)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["macro_f1"] == pytest.approx(
        (2 / 3 + 2 / 3 + 1) / 3
    )  # class 0: P=1/2 R=1; class 1: P=1 R=1/2; class 2: 1
    assert per_class_accuracy(probabilities, labels) == {0: 1.0, 1: 0.5, 2: 1.0}
    # ECE: bins (0.8,0.867]: {0.8 correct, 0.9 ...}; computed by hand below
    confidences, correct = np.array([0.9, 0.7, 0.6, 0.8]), np.array([1, 1, 0, 1])
    bins = np.ceil(confidences * 15) - 1
    expected = sum(
        (bins == b).mean() * abs(correct[bins == b].mean() - confidences[bins == b].mean()) for b in np.unique(bins)
    )
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_auc_is_one_for_perfect_ranking_and_nan_for_one_class():
    probabilities = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    assert one_vs_rest_auc(probabilities, np.array([0, 1, 2, 0])) == pytest.approx(1.0)
    assert math.isnan(one_vs_rest_auc(probabilities, np.array([1, 1, 1, 1])))


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_keep_shape_and_grow_with_severity(name):
    images = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 8:20, 10:18] = 255
    changes = []
    for severity in SEVERITIES:
        corrupted = corrupt(images, name, severity)
        assert corrupted.shape == images.shape and corrupted.dtype == torch.uint8
        changes.append((corrupted.float() - images.float()).abs().mean().item())
    assert changes[0] > 0 and changes[0] <= changes[1] <= changes[2]
    assert torch.equal(corrupt(images, name, 2), corrupt(images, name, 2))  # deterministic


def test_corrupt_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "snow", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "contrast", 4)


def test_the_corruption_suite_runs_the_configured_severities_on_at_most_corruption_images():
    """EvaluationConfig picks the corruption severities and caps each corrupted set; by default every severity
    corrupt() knows; a severity it does not know, none, a repeated one or no image is refused naming the field."""
    manifest = pd.DataFrame({"split": "test", "label": pd.array(["0", "1"] * 15, dtype="string"), "site": "default"})
    pixels = np.random.default_rng(0).integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    config = EvaluationConfig(severities=(2,), corruption_images=12)
    sets = evaluation_sets((manifest, pixels), (manifest, pixels), ["0", "1"], names=("a", "b"), config=config)
    assert [name for name, *_ in sets] == ["in_domain", "shift", *(f"{name}@2" for name in CORRUPTIONS)]
    assert all(len(labels) == 12 for _, kind, _, labels in sets if kind == "corruption")
    assert EvaluationConfig().severities == SEVERITIES
    for bad in ({"severities": ()}, {"severities": (4,)}, {"severities": (1, 1)}, {"corruption_images": 0}):
        with pytest.raises(ValueError, match="EvaluationConfig"):
            EvaluationConfig(**bad)


ARMS = [("pixels", "linear"), ("scratch", "finetune")] + [
    (init, probe) for init in ("simclr", "simclr+domain", "simclr+micle") for probe in ("linear", "finetune")
]


def _results(seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for init, probe in ARMS:
        for fraction, labels in ((0.01, 30), (0.1, 300), (1.0, 3000)):
            for seed in seeds:
                base = 0.5 + 0.4 * fraction + (0.05 if init not in ("pixels", "scratch") else 0) + 0.01 * seed
                sets = [("in_domain", "in_domain"), ("shift", "shift")] + [
                    (f"{c}@{s}", "corruption") for c in CORRUPTIONS for s in SEVERITIES
                ]
                for eval_set, kind in sets:
                    accuracy = (
                        base
                        - (0.2 if kind == "shift" else 0)
                        - (0.02 * int(eval_set[-1]) if kind == "corruption" else 0)
                    )
                    rows.append(
                        {
                            "init": init,
                            "probe": probe,
                            "label_fraction": fraction,
                            "seed": seed,
                            "num_labels": labels,
                            "val_labels": labels // 10,
                            "eval_set": eval_set,
                            "eval_kind": kind,
                            "images": 100,
                            "accuracy": accuracy,
                            "macro_f1": accuracy,
                            "auc_ovr": 0.9,
                            "ece": 0.1,
                            "val_accuracy": base,
                            "val_loss": 1 - base,
                            "chosen": f"lr={0.001 * (1 + seed):g} wd=0.0001",
                            "best_step": 40 + 20 * seed,
                            "final_train_accuracy": 0.9 + 0.02 * seed,
                        }
                    )
    return pd.DataFrame(rows)


def test_report_has_every_method_probe_fraction_and_chart():
    results = _results()
    table = results_markdown(results)
    assert table.count("\n") == 2 + len(ARMS) * 3  # note, header, rule, one row per arm and fraction
    assert all(len(line.split("|")) == 11 for line in table.splitlines()[1:])  # nine columns
    assert "over 2 seeds [0, 1]" in table and "labels: training + validation" in table
    # pixels at 10%: in-domain 0.54 and 0.55 over two seeds: mean 0.545 ± t(0.975, 1) * 0.00707 / sqrt(2); the seeds
    # chose different learning rates; best steps 40 and 60 (median 50); training accuracy 0.90 and 0.92
    assert (
        "| pixels | linear | 0.1 (300 + 30) | 0.5450 ± 0.0635 | 0.3450 ± 0.0635 | 0.1000 ± 0.0000"
        " | varies | 50 | 0.910 |" in table
    )
    assert "1 seed (0): no interval" in results_markdown(_results(seeds=(0,)))
    assert "severity 3" in corruption_markdown(results)
    figures = report_figures(results)
    assert set(figures) == {"label_efficiency", "shift_accuracy", "corruptions"}
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    assert evaluation_html(results, figures).count("data:image/png;base64") == 3


def test_umap_picture_is_seeded_separates_what_differs_and_caps_its_points():
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 50)
    features = rng.normal(size=(100, 16)) + (labels == "b")[:, None] * 3.0
    points = umap_points(features, seed=0)
    assert points.shape == (100, 2) and np.array_equal(points, umap_points(features, seed=0))
    distances = ((points[:, None] - points[None]) ** 2).sum(axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (
        labels[distances.argmin(axis=1)] == labels
    ).mean() > 0.95  # a point's nearest neighbour in the picture shares its label
    sites = np.array(["site-1"] * 60 + ["site-2"] * 40)
    assert embedding_figure(features, labels, sites, "test", max_points=EMBEDDING_MIN_POINTS).startswith(b"\x89PNG")


UMAP_IN_A_PROCESS = """
import json, numpy as np, umap
from sslflow.reporting.charts import umap_points
points = umap_points(np.random.default_rng(0).normal(size=(40, 8)), seed=0)
# functions umap-learn compiles without numba's cache: the fit's neighbour weights and its layout's epochs
compiled = [umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
            umap.layouts._nb_optimize_layout_euclidean_single_epoch]
print(json.dumps({"points": points.tolist(), "loaded": [sum(f.stats.cache_hits.values()) for f in compiled]}))
"""


def test_a_later_process_loads_umaps_compiled_functions_from_numbas_cache():
    """umap-learn compiles its numba functions in every process; the picture keeps them in numba's cache, so a later
    process (the next evaluate, a rerun) loads them and draws the same points."""
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", UMAP_IN_A_PROCESS], env=environment, capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )
        for _ in range(2)
    ]
    assert all(runs[1]["loaded"]) and runs[1]["points"] == runs[0]["points"]


def test_evaluate_logs_the_umap_picture_to_mlflow_and_the_deck(tmp_path):
    """The evaluate task's body on real digits: charts/embedding.png is in its MLflow run and in the Deck."""
    digits = read_mnist_5k()
    pixels, labels = digits.pixels[::20], np.array(digits.labels[::20])  # 250 digits, every class
    in_domain = _test_split(tmp_path, "digits", pixels[:150], labels[:150], sites=["site-1", "site-2"] * 75)
    shift = _test_split(tmp_path, "digits-shift", pixels[150:], labels[150:], sites=["default"] * 100)
    torch.manual_seed(0)
    checkpoint = tmp_path / "probe.pt"
    torch.save(Classifier(build_encoder("small_cnn", 1, 28), 10).state_dict(), checkpoint)
    models = [
        FinetunedModel(
            checkpoint=FlyteFile(str(checkpoint)),
            encoder_name="small_cnn",
            in_channels=1,
            image_size=28,
            class_names=[str(d) for d in range(10)],
            init="simclr+micle",
            probe=probe,
            label_fraction=1.0,
            num_labels=150,
            val_accuracy=0.5,
            content_sha256="0" * 64,
            mlflow_run_id="",
        )
        for probe in (
            "linear",
            "finetune",
        )  # the picture is of a linear probe's encoder; the corruption chart of fine-tuned ones
    ]
    parent_run_id = start_parent_run("test_evaluation", {})
    evaluate.task_function(models=models, in_domain=in_domain, shift=shift, parent_run_id=parent_run_id)

    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    assert "charts/embedding.png" in {item.path for item in client.list_artifacts(run.info.run_id, "charts")}
    assert (
        Path(client.download_artifacts(run.info.run_id, "charts/embedding.png", str(tmp_path)))
        .read_bytes()
        .startswith(b"\x89PNG")
    )
    (deck,) = [
        deck for deck in FlyteContextManager.current_context().user_space_params.decks if deck.name == "evaluation"
    ]
    assert "<h4>embedding</h4><img" in deck.html


def _test_split(directory: Path, name: str, pixels: np.ndarray, labels: np.ndarray, sites: list[str]) -> Dataset:
    """A Dataset whose rows are all labelled test rows: ``pixels`` (N, 1, 28, 28) uint8 with ``labels`` and ``sites``
    (N,)."""
    manifest = pd.DataFrame({column: [""] * len(labels) for column in MANIFEST_COLUMNS}).assign(
        sha256=[f"{name}-{i}" for i in range(len(labels))],
        size_bytes=784,
        width=28,
        height=28,
        mode="L",
        case_id=[f"case-{i}" for i in range(len(labels))],
        case_id_is_proxy=False,
        site=sites,
        label=pd.array(labels, dtype="string"),
        split="test",
    )
    sha256 = write_arrays(directory / name, manifest, pixels)
    return Dataset(
        directory=FlyteDirectory(str(directory / name)),
        name=name,
        num_images=len(labels),
        content_sha256=sha256,
        mlflow_run_id="",
    )


def test_effect_lines_say_no_difference_for_equal_accuracies():
    lines = effect_lines(_results(seeds=(0, 1, 2)))
    # +domain and +micle have the same made-up accuracies, simclr too: every step is "no difference"
    assert len(lines) == 2 * 2 * 3 and all(line.endswith("-> no difference") for line in lines)
    assert "MICLe pairs (finetune, 0.1): 0.6000 ± 0.0248 vs 0.6000 ± 0.0248 -> no difference" in lines
