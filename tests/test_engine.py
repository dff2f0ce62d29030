import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.evaluate import knn_accuracy
from ssl_models.finetuning import FinetuneConfig, finetune, validation_scores
from ssl_models.label_fractions import stratified_subset
from ssl_models.loop import EpochTotals, epoch_count, epoch_schedule, steps_per_epoch
from ssl_models.optim import LARS, warmup_cosine
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive


@pytest.mark.parametrize(
    "name,channels,size,dim",
    [("small_cnn", 1, 28, 128), ("resnet18", 1, 28, 512), ("resnet18", 3, 64, 512), ("resnet50", 3, 112, 2048)],
)
def test_encoders_take_any_channels_and_resolution(name, channels, size, dim):
    encoder = build_encoder(name, channels, size)
    assert encoder.feature_dim == dim
    assert encoder(torch.zeros(2, channels, size, size)).shape == (2, dim)


def test_unknown_encoder_is_named():
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        build_encoder("vit", 3)


def test_the_task_modules_import_torchvision_only_for_a_resnet_and_great_expectations_only_to_validate():
    """torchvision takes about 2 s to import, great-expectations about 2 s: a task process training small_cnn never
    needs the first, and loading the workflows (every `pyflyte run`, before any task) needs neither."""
    code = (
        "import sys, tasks.finetune, tasks.pretrain; torchvision = 'torchvision' in sys.modules; "
        "import workflows.pipeline, workflows.data; print(torchvision, 'great_expectations' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    assert result.stdout.split() == ["False", "False"], result.stdout + result.stderr[-2000:]


def _loaded_after_importing(modules: str, packages: tuple[str, ...]) -> set[str]:
    """Which of ``packages`` a fresh Python process has loaded once it imported ``modules`` (comma-separated), as a
    pod or a `pyflyte run` does."""
    code = f"import sys, {modules}; print(*(name for name in {packages!r} if name in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_the_data_workflow_and_its_task_modules_load_without_pytorch():
    """The data workflow's pods (source_fingerprint, tracking_store, start/finish_data_run, plan_ingest, ingest_chunk,
    join_ingest, validate) and every `pyflyte run workflows/data.py` import neither PyTorch nor scikit-learn (about
    2.5 s of CPU in each process): what they report on a dataset needs no model."""
    modules = "workflows.data, tasks.data_run, tasks.ingest, tasks.store, tasks.validate"
    assert _loaded_after_importing(modules, ("torch", "sklearn")) == set()


def test_the_plan_and_chunk_pods_load_without_mlflow():
    """plan_ingest's and ingest_chunk's pods (hundreds of chunks at 10^6 files) import tasks.ingest without MLflow
    (about 1.5 s of CPU each): only source_fingerprint and join_ingest talk to the tracking server."""
    assert _loaded_after_importing("tasks.ingest", ("mlflow",)) == set()


def test_lars_and_schedule_reduce_a_quadratic():
    weight = torch.nn.Parameter(torch.ones(4, 4) * 3)
    optimizer = LARS([weight], lr=0.5, weight_decay=0.0, trust_coefficient=0.1)
    schedule = warmup_cosine(optimizer, warmup_steps=2, total_steps=50)
    assert schedule.get_last_lr()[0] == pytest.approx(0.25)  # first warm-up step: half the base rate
    for _ in range(50):
        loss = (weight**2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert (weight**2).sum().item() < 0.5 * 16 * 9


def test_pretraining_lowers_the_contrastive_loss_with_lars():
    images = torch.randint(0, 256, (96, 1, 16, 16), dtype=torch.uint8)
    config = PretrainConfig(
        epochs=4,
        batch_size=32,
        optimizer="lars",
        learning_rate=0.5,
        warmup_epochs=1,
        augment=AugmentConfig(output_size=16),
    )
    history = pretrain_contrastive(build_encoder("small_cnn", 1), InMemoryPairs(images, list(range(96))), config)
    assert len(history) == 4 and history[-1]["loss"] < history[0]["loss"]
    assert all(record["images_per_second"] > 0 for record in history)


def test_finetune_learns_a_separable_task():
    labels = np.arange(64) % 2
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[labels == 1, :, :, :14] = 255
    model, history = finetune(
        build_encoder("small_cnn", 1),
        images,
        labels,
        2,
        FinetuneConfig(epochs=3, min_steps=30, batch_size=16, head_warmup_steps=5),
    )
    assert history[-1]["accuracy"] > 0.9


def test_label_fractions_are_stratified_and_nested():
    labels = np.repeat(np.arange(5), 40)
    small, large = stratified_subset(labels, 0.1, seed=3), stratified_subset(labels, 0.5, seed=3)
    assert np.bincount(labels[small]).tolist() == [4] * 5 and np.bincount(labels[large]).tolist() == [20] * 5
    assert set(small) <= set(large)
    with pytest.raises(ValueError, match="label fraction"):
        stratified_subset(labels, 0.0)


def test_knn_accuracy_on_clustered_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=1)
    labels = torch.arange(300) % 3
    features = torch.nn.functional.normalize(centres[labels] + 0.1 * torch.randn(300, 16, generator=generator), dim=1)
    assert knn_accuracy(features[:200], labels[:200], features[200:], labels[200:], k=20) > 0.95
    shuffled = labels[:200][torch.randperm(200, generator=generator)]
    assert knn_accuracy(features[:200], shuffled, features[200:], labels[200:], k=20) < 0.6


def test_throughput_benchmark_quick_run_writes_its_result(tmp_path):
    root = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, "benchmarks/pretrain_throughput.py", "--smoke", "--out", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (result,) = tmp_path.glob("pretrain_throughput-smoke-*.json")
    record = json.loads(result.read_text())
    assert record["command"].endswith("--smoke --out " + str(tmp_path)) and record["machine"]["cpu_count"]
    for row in record["results"].values():
        assert row["engine_over_dataloader"] > 0 and row["engine"]["peak_memory_mb"] > 0


def test_linear_probe_leaves_the_encoder_untouched():
    labels = np.arange(64) % 2
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[labels == 1, :, :, :14] = 255
    encoder = build_encoder("small_cnn", 1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model, history = finetune(
        encoder, images, labels, 2, FinetuneConfig(linear_probe=True), validation=(images, labels)
    )
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert history[-1]["accuracy"] > 0.9 and history[-1]["converged"]
    with pytest.raises(ValueError, match="validation"):
        finetune(encoder, images, labels, 2, FinetuneConfig(linear_probe=True))


def test_step_arithmetic_is_shared_by_every_loop():
    assert steps_per_epoch(64, 32) == 2 and steps_per_epoch(65, 32) == 3 and steps_per_epoch(0, 32) == 1
    assert steps_per_epoch(11, 2, world_size=3) == 2  # each rank sees ceil(11 / 3) = 4 samples
    assert epoch_count(2, min_steps=10, steps_in_epoch=2) == 5 and epoch_count(8, min_steps=10, steps_in_epoch=2) == 8
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = epoch_schedule(optimizer, steps_in_epoch=4, epochs=3, warmup_epochs=2)
    rates = []
    for _ in range(12):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[:8] == pytest.approx([(step + 1) / 8 for step in range(8)]) and rates[8] == pytest.approx(1.0)
    totals = EpochTotals()
    totals.add(torch.tensor(1.0), 2, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    totals.add(torch.tensor(4.0), 1, torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert totals.mean_loss == pytest.approx(2.0) and totals.accuracy == pytest.approx(2 / 3)


def test_resumed_pretraining_continues_the_same_run():
    images = torch.randint(0, 256, (48, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = PretrainConfig(epochs=3, batch_size=16, augment=AugmentConfig(output_size=16))
    states = {}

    def keep_state(epoch, metrics, state_fn):
        states[epoch] = copy.deepcopy(state_fn())  # state_fn() shares tensors with the live run

    full = pretrain_contrastive(
        build_encoder("small_cnn", 1), InMemoryPairs(images, list(range(48))), config, on_epoch_end=keep_state
    )
    resumed = pretrain_contrastive(
        build_encoder("small_cnn", 1), InMemoryPairs(images, list(range(48))), config, resume_state=states[0]
    )
    assert [record["epoch"] for record in resumed] == [1, 2]
    assert [record["loss"] for record in resumed] == pytest.approx(
        [record["loss"] for record in full[1:]], rel=1e-3
    )  # bitwise on CPU
    with pytest.raises(TypeError):
        pretrain_contrastive(
            build_encoder("small_cnn", 1), InMemoryPairs(images, list(range(48))), config, None
        )  # on_epoch_end is keyword-only


def test_explicit_finetune_epochs_are_what_runs(caplog):
    """FinetuneConfig(epochs=1) trains one epoch: no silent minimum raises it (issue: 1 epoch asked, 150 run)."""
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    labels = np.arange(30) % 2
    _, history = finetune(
        build_encoder("small_cnn", 1), images, labels, 2, FinetuneConfig(epochs=1, batch_size=16, head_warmup_steps=0)
    )
    assert len(history) == 1
    with caplog.at_level("INFO", logger="ssl_models.finetuning"):
        _, history = finetune(
            build_encoder("small_cnn", 1),
            images,
            labels,
            2,
            FinetuneConfig(epochs=1, min_steps=10, batch_size=16, head_warmup_steps=0),
        )
    assert (
        history[-1]["stopped_step"] == 10 and "min_steps=10 raises epochs from 1 to 5" in caplog.text
    )  # asked for, and said


def _contradicting_validation() -> tuple:
    """64 training images (class 1: left half bright) and 64 validation images labelled by the opposite rule:
    the more a model learns the training task, the lower its validation accuracy, so validation peaks early."""
    labels = np.arange(64) % 2
    images = torch.randint(0, 40, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[labels == 1, :, :, :14] = 255
    return images, labels, (images.clone(), 1 - labels)


def test_finetune_returns_the_weights_of_its_best_validation_step():
    images, labels, validation = _contradicting_validation()
    config = FinetuneConfig(epochs=1, min_steps=20, batch_size=16, head_warmup_steps=0, eval_every=1, patience=0)
    model, history = finetune(build_encoder("small_cnn", 1), images, labels, 2, config, validation=validation)
    curve = [record["val_accuracy"] for record in history]
    assert (
        len(curve) == 20 and history[-1]["stopped_step"] == 20 and not history[-1]["early_stopped"]
    )  # patience 0: the whole budget
    assert (
        history[-1]["best_val_accuracy"] == max(curve) > curve[-1] + 0.2
    )  # it peaked, then fell as the training rule was learnt
    assert history[-1]["best_step"] == 1 + curve.index(max(curve)) < 20
    assert validation_scores(model, *validation, config.augment)[0] == pytest.approx(
        max(curve)
    )  # the peak's weights, not the last step's


def test_early_stopping_stops_after_patience_evaluations_without_a_better_one():
    images, labels, validation = _contradicting_validation()
    config = FinetuneConfig(epochs=1, min_steps=20, batch_size=16, head_warmup_steps=0, eval_every=1, patience=2)
    model, history = finetune(build_encoder("small_cnn", 1), images, labels, 2, config, validation=validation)
    last = history[-1]
    assert last["early_stopped"] and last["stopped_step"] == last["best_step"] + 2 < 20 and last["budget_steps"] == 20
    assert validation_scores(model, *validation, config.augment)[0] == pytest.approx(last["best_val_accuracy"])


def test_scratch_and_pretrained_arms_share_one_budget_and_stopping_rule():
    """finetune_all gives every arm at a fraction the same config (scratch only drops the LP-FT head warm-up): the
    budget and the evaluation steps depend on the labels and the config, never on the initial weights."""
    images, labels, _ = _contradicting_validation()
    validation = (images, labels)
    config = FinetuneConfig(
        epochs=1, min_steps=32, batch_size=16, head_warmup_steps=3, eval_every=8, patience=0
    )  # 4 steps an epoch
    pretrained = build_encoder("small_cnn", 1, seed=1)
    with torch.no_grad():
        for parameter in pretrained.parameters():
            parameter.mul_(2.0)  # other starting weights
    runs = [
        finetune(
            build_encoder("small_cnn", 1, seed=0),
            images,
            labels,
            2,
            dataclasses.replace(config, head_warmup_steps=0),
            validation=validation,
        ),
        finetune(pretrained, images, labels, 2, config, validation=validation),
    ]
    steps = [[record["step"] for record in history] for _, history in runs]
    assert (
        steps[0] == steps[1] == [8, 16, 24, 32]
        and runs[0][1][-1]["budget_steps"] == runs[1][1][-1]["budget_steps"] == 32
    )
