"""The model registry against a real `mlflow server`: gate, promotion, rollback, idempotence, load by
alias, and what a failure half-way leaves behind (a crash of the server included).

The models are constant classifiers (zero linear weights, a bias for one class), so their accuracy is
the share of that class in a gate set, and every gate decision below is known in advance:

    gate labels   in-domain: 5 x "0", 3 x "1", 2 x "2"     shift: 2 x "0", 3 x "1", 5 x "2"
    always "1"    (0.3, 0.3)
    always "0"    (0.5, 0.2)   better in-domain, worse under shift
    always "2"    (0.2, 0.5)   worse in-domain, better under shift
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from flytekit.exceptions.user import FlyteRecoverableException
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from ingested import write_arrays
from live_mlflow import MlflowServer, free_port, mlflow_at
from mlflow.tracking import MlflowClient

from ssl_models.augment import FINETUNE_AUGMENT, normalise
from ssl_models.encoders import build_encoder
from ssl_models.heads import Classifier
from sslflow.config import RegistryConfig
from sslflow.data.manifest import MANIFEST_COLUMNS
from sslflow.data.sources.builtin import read_mnist_5k
from sslflow.files import file_sha256
from sslflow.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    COMPLETE,
    INCOMPLETE,
    PREVIOUS_CHAMPION,
    STATE_TAG,
    aliases_of,
    rollback_aliases,
)
from sslflow.registry.gate import Accuracies, promotion_gate
from sslflow.registry.names import default_model_name
from sslflow.registry.serving import ONNX_ARTIFACT
from sslflow.tracking.runs import start_parent_run
from sslflow.tracking.server import TrackingServerUnavailable
from sslflow.tracking.store import tracking_uri
from tasks.register import register
from tasks.shared import Dataset, FinetunedModel
from workflows.lifecycle import rollback

CLASSES = ["0", "1", "2"]


# ---------------------------------------------------------------- the gate alone (no MLflow)


def test_gate_promotes_the_first_model():
    assert promotion_gate(Accuracies(0.1, 0.1), None, RegistryConfig()).promote


def test_gate_needs_better_in_domain_and_no_worse_shift():
    champion, config = Accuracies(0.80, 0.50), RegistryConfig()
    assert promotion_gate(Accuracies(0.81, 0.50), champion, config).promote
    tie = promotion_gate(Accuracies(0.80, 0.60), champion, config)
    assert not tie.promote and "in-domain 0.8000 vs champion 0.8000" in tie.reason  # newer is not better
    worse_shift = promotion_gate(Accuracies(0.90, 0.49), champion, config)
    assert not worse_shift.promote and "shift 0.4900" in worse_shift.reason and "in-domain" not in worse_shift.reason
    both = promotion_gate(Accuracies(0.70, 0.40), champion, config)
    assert not both.promote and "in-domain" in both.reason and "shift" in both.reason


def test_gate_thresholds_are_configurable():
    champion = Accuracies(0.80, 0.50)
    lenient = RegistryConfig(non_inferiority_margin=0.02, max_shift_drop=0.05)
    assert promotion_gate(Accuracies(0.79, 0.46), champion, lenient).promote
    assert not promotion_gate(Accuracies(0.78, 0.46), champion, lenient).promote  # exactly at the margin: fails
    assert promotion_gate(Accuracies(0.81, 0.45), champion, lenient).promote  # exactly at the allowed drop: passes
    assert not promotion_gate(Accuracies(0.81, 0.44), champion, lenient).promote


@pytest.mark.parametrize("field", ["non_inferiority_margin", "max_shift_drop"])
def test_registry_config_rejects_impossible_thresholds(field):
    with pytest.raises(ValueError, match=field):
        RegistryConfig(**{field: -0.1})
    with pytest.raises(ValueError, match=field):
        RegistryConfig(**{field: 1.5})


# ---------------------------------------------------------------- against a live server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def _few_fast_retries(monkeypatch) -> None:
    """A dead server then fails in seconds instead of MLflow's default of minutes."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def tracking(server, monkeypatch):
    """sslflow pointed at the live server for one test."""
    _few_fast_retries(monkeypatch)
    with mlflow_at(monkeypatch, server.uri):
        yield server


def _dataset(
    directory: Path,
    name: str,
    counts: dict[str, int],
    test_counts: dict[str, int] | None = None,
    images: np.ndarray | None = None,
) -> Dataset:
    """A dataset whose gate split holds ``counts`` labels (the promotion gate reads these) and whose test split
    holds ``test_counts`` (default: the same); its ``images`` (N, 1, 28, 28) uint8, default random pixels."""
    labels = [label for label, count in counts.items() for _ in range(count)]
    test_labels = [label for label, count in (test_counts or counts).items() for _ in range(count)]
    rng = np.random.default_rng(0)
    manifest = pd.DataFrame({column: [""] * (len(labels) + len(test_labels)) for column in MANIFEST_COLUMNS})
    manifest = manifest.assign(
        sha256=[f"{name}-{i}" for i in range(len(manifest))],
        size_bytes=784,
        width=28,
        height=28,
        mode="L",
        case_id=[f"case-{i}" for i in range(len(manifest))],
        case_id_is_proxy=False,
        label=pd.array(labels + test_labels, dtype="string"),
        split=["gate"] * len(labels) + ["test"] * len(test_labels),
    )
    labels = labels + test_labels
    images = (
        rng.integers(0, 256, size=(len(labels), 1, 28, 28), dtype=np.uint8) if images is None else images[: len(labels)]
    )
    sha256 = write_arrays(directory / name, manifest, images)
    return Dataset(
        directory=FlyteDirectory(str(directory / name)),
        name=name,
        num_images=len(labels),
        content_sha256=sha256,
        mlflow_run_id="",
    )


@pytest.fixture(scope="module")
def gate_sets(tmp_path_factory) -> tuple[Dataset, Dataset]:
    root = tmp_path_factory.mktemp("datasets")
    return _dataset(root, "in-domain", {"0": 5, "1": 3, "2": 2}), _dataset(root, "shift", {"0": 2, "1": 3, "2": 5})


def _constant_model(directory: Path, predicted: str, classes: list[str] = CLASSES) -> FinetunedModel:
    torch.manual_seed(0)
    classifier = Classifier(build_encoder("small_cnn", 1, 28), len(classes))
    with torch.no_grad():
        classifier.linear.weight.zero_()
        classifier.linear.bias.copy_(torch.tensor([10.0 if name == predicted else 0.0 for name in classes]))
    return _finetuned(directory, classifier, f"always-{predicted}", classes)


def _finetuned(directory: Path, classifier: Classifier, name: str, classes: list[str]) -> FinetunedModel:
    path = directory / f"{name}-{uuid.uuid4().hex[:8]}.pt"
    torch.save(classifier.state_dict(), path)
    values = {
        "checkpoint": FlyteFile(str(path)),
        "encoder_name": "small_cnn",
        "in_channels": 1,
        "image_size": 28,
        "class_names": classes,
        "init": "simclr+micle",
        "probe": "finetune",
        "label_fraction": 1.0,
        "num_labels": 30,
        "val_accuracy": 0.5,
        "content_sha256": file_sha256(path),
        "mlflow_run_id": "",
        "seed": 0,
        "selectable": True,
        "initial_weights": "s3://weights/user.pth",
        "initial_weights_sha256": "ab" * 32,
        "num_val_labels": 10,
        "val_loss": 0.7,
        "chosen": "lr=0.001 wd=0.0001",
        "best_step": 40,
        "final_train_accuracy": 0.9,
    }
    return FinetunedModel(**{f.name: values[f.name] for f in dataclasses.fields(FinetunedModel)})


def _register(
    model: FinetunedModel,
    gate_sets,
    config: RegistryConfig,
    parent_run_id: str | None = None,
    domain_source: str = "mnist-5k",
):
    """The register task's body, as the pipeline runs it (Flyte's cache aside)."""
    in_domain, shift = gate_sets
    parent_run_id = parent_run_id or start_parent_run("test_registry", {})
    return register.task_function(
        models=[model],
        in_domain=in_domain,
        shift=shift,
        config=config,
        domain_source=domain_source,
        parent_run_id=parent_run_id,
    )


def _versions(model_name: str) -> list:
    return sorted(MlflowClient().search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version))


def test_gate_promotion_load_by_alias_and_rollback(tracking, gate_sets, tmp_path):
    config = RegistryConfig(model_name=f"gate-{uuid.uuid4().hex[:8]}")
    first = _register(_constant_model(tmp_path, "1"), gate_sets, config)
    assert (first.version, first.promoted, first.champion_version) == ("1", True, "1")
    assert first.decision == "promoted: no champion yet"
    assert (first.in_domain_accuracy, first.shift_accuracy) == pytest.approx((0.3, 0.3))

    # better in-domain but worse under shift: only the challenger alias moves; the reason is tagged
    second = _register(_constant_model(tmp_path, "0"), gate_sets, config)
    assert (second.version, second.promoted, second.aliases, second.champion_version) == ("2", False, [CHALLENGER], "1")
    tags = MlflowClient().get_model_version(config.model_name, "2").tags
    assert tags["gate.promoted"] == "false" and "shift 0.2000 vs champion 0.3000" in tags["gate.decision"]
    assert tags[STATE_TAG] == COMPLETE and tags["gate.champion_version"] == "1"
    for key in (
        "checkpoint_sha256",
        "pipeline_run_id",
        "code_version",
        "in_domain_data_sha256",
        "shift_data_sha256",
        "label_fraction",
    ):
        assert tags[key], key
    assert (tags["initial_weights.source"], tags["initial_weights.sha256"]) == (
        "s3://weights/user.pth",
        "ab" * 32,
    )  # the weights' lineage
    assert aliases_of(MlflowClient(), config.model_name) == {CHAMPION: "1", CHALLENGER: "2"}

    # the same kind of model passes once a 0.1 drop under shift is allowed: champion moves, the old one is kept
    third = _register(_constant_model(tmp_path, "0"), gate_sets, dataclasses.replace(config, max_shift_drop=0.15))
    assert (third.version, third.promoted, sorted(third.aliases)) == ("3", True, [CHALLENGER, CHAMPION])
    assert aliases_of(MlflowClient(), config.model_name) == {CHAMPION: "3", CHALLENGER: "3", PREVIOUS_CHAMPION: "1"}

    # the champion loads by alias and predicts from raw pixel values
    images = np.full((4, 1, 28, 28), 255.0, dtype=np.float32)
    probabilities = mlflow.pyfunc.load_model(f"models:/{config.model_name}@champion").predict(images)
    assert probabilities.shape == (4, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities.argmax(axis=1) == CLASSES.index("0")).all()
    assert mlflow.pytorch.load_model(f"models:/{config.model_name}@champion")(torch.from_numpy(images)).shape == (4, 3)

    # one command undoes the promotion; with no older champion left, a second one explains why it cannot
    assert "back to version 1" in rollback(model_name=config.model_name)  # the workflow, run locally
    assert aliases_of(MlflowClient(), config.model_name) == {CHAMPION: "1", CHALLENGER: "3"}
    assert "rolled_back" in MlflowClient().get_model_version(config.model_name, "3").tags
    with pytest.raises(ValueError, match="no 'previous_champion' alias"):
        rollback_aliases(config.model_name)


def _digit_classifier(pixels: np.ndarray, labels: list[str]) -> Classifier:
    """A seeded small_cnn whose linear layer is a least-squares fit of its features of ``pixels`` (N, 1, 28, 28) to
    the one-hot ``labels`` (digits "0"-"9"), scaled so that its probabilities are confident."""
    torch.manual_seed(1)
    classifier = Classifier(build_encoder("small_cnn", 1, 28), 10).eval()
    with torch.no_grad():
        features = classifier.encoder(normalise(torch.from_numpy(pixels), FINETUNE_AUGMENT)).double().numpy()
        inputs, targets = np.hstack([features, np.ones((len(features), 1))]), np.eye(10)[np.array(labels, dtype=int)]
        weights = 20.0 * np.linalg.lstsq(inputs, targets, rcond=None)[0]  # (D + 1, 10)
        classifier.linear.weight.copy_(torch.from_numpy(weights[:-1].T).float())
        classifier.linear.bias.copy_(torch.from_numpy(weights[-1]).float())
    return classifier


def test_the_registered_version_carries_an_onnx_export_with_the_same_probabilities(tracking, tmp_path):
    """ONNX Runtime on the version's model.onnx gives PyTorch's probabilities (within 1e-4) on real MNIST digits,
    for a classifier whose output depends on the image (a linear layer fit to the digits, not a constant)."""
    digits = read_mnist_5k()
    spread = digits.pixels[:: len(digits.pixels) // 60][:60]  # mnist_5k.csv is sorted by label: every digit
    classes = [str(digit) for digit in range(10)]
    sets = (
        _dataset(tmp_path, "in-digits", {label: 3 for label in classes}, images=spread),
        _dataset(tmp_path, "shift-digits", {label: 3 for label in classes}, images=spread[::-1].copy()),
    )
    model = _finetuned(tmp_path, _digit_classifier(digits.pixels[1::10], digits.labels[1::10]), "digits", classes)
    config = RegistryConfig(model_name=f"onnx-{uuid.uuid4().hex[:8]}")
    assert _register(model, sets, config).version == "1"

    images = digits.pixels[7::50][:100].astype(
        np.float32
    )  # other digits than the gate's, a batch size the export never saw
    # the lines of docs/serving.md
    path = mlflow.artifacts.download_artifacts(f"models:/{config.model_name}@champion/{ONNX_ARTIFACT}")
    served = onnxruntime.InferenceSession(path).run(None, {"images": images})[0]
    expected = (
        mlflow.pytorch.load_model(f"models:/{config.model_name}@champion")(torch.from_numpy(images)).detach().numpy()
    )
    assert served.shape == (100, 10) and np.abs(served - expected).max() < 1e-4
    assert expected.std(axis=0).max() > 0.05, "the probabilities depend on the image, so the comparison means something"
    assert (
        served.argmax(axis=1) == np.array(digits.labels[7::50][:100], dtype=int)
    ).mean() > 0.5  # it reads the digits


def test_each_domain_source_registers_its_own_model_unless_one_is_named(tracking, gate_sets, tmp_path):
    """Two folders (even of the same name) are two registered models, each promoting its first version; the
    demo's source keeps one stable name; RegistryConfig.model_name overrides the derived name."""
    folders = [tmp_path / "site-a" / "scans", tmp_path / "site-b" / "scans"]
    for folder in folders:
        folder.mkdir(parents=True)
    names = [default_model_name(str(folder)) for folder in folders]
    assert names[0] != names[1] and all(name.startswith("sslflow-scans-") for name in names)
    assert (
        default_model_name(str(folders[0])) == default_model_name(f"{folders[0]}/") == names[0]
    )  # one folder, one name
    registrations = [
        _register(_constant_model(tmp_path, "1"), gate_sets, RegistryConfig(), domain_source=str(folder))
        for folder in folders
    ]
    assert [(r.model_name, r.version, r.promoted) for r in registrations] == [
        (names[0], "1", True),
        (names[1], "1", True),
    ]
    assert (
        default_model_name("mnist-5k")
        == "sslflow-mnist-5k"
        == rollback.python_interface.default_inputs_as_kwargs["model_name"]
    )
    assert default_model_name("s3://bucket/ct/2024/").startswith("sslflow-bucket-ct-2024-")
    named = RegistryConfig(model_name=f"named-{uuid.uuid4().hex[:8]}")
    assert (
        _register(_constant_model(tmp_path, "1"), gate_sets, named, domain_source=str(folders[0])).model_name
        == named.model_name
    )


def test_rerun_of_a_registered_pipeline_run_reuses_its_version(tracking, gate_sets, tmp_path):
    config = RegistryConfig(model_name=f"idempotent-{uuid.uuid4().hex[:8]}")
    model, parent_run_id = _constant_model(tmp_path, "1"), start_parent_run("test_registry", {})
    first = _register(model, gate_sets, config, parent_run_id)
    again = _register(model, gate_sets, config, parent_run_id)
    assert again.version == first.version and again.promoted and again.decision.startswith("already registered")
    assert len(_versions(config.model_name)) == 1
    assert aliases_of(MlflowClient(), config.model_name) == {CHAMPION: "1", CHALLENGER: "1"}
    # a new pipeline run with the same checkpoint is a new version, and a tie does not promote it
    other_run = _register(model, gate_sets, config)
    assert (other_run.version, other_run.promoted, other_run.champion_version) == ("2", False, "1")


def test_failure_after_create_deletes_the_version_and_restores_aliases(tracking, gate_sets, tmp_path, monkeypatch):
    config = RegistryConfig(model_name=f"undo-{uuid.uuid4().hex[:8]}", max_shift_drop=0.5)
    _register(_constant_model(tmp_path, "1"), gate_sets, config)
    _register(_constant_model(tmp_path, "0"), gate_sets, config)
    before = aliases_of(MlflowClient(), config.model_name)
    assert before == {CHAMPION: "2", CHALLENGER: "2", PREVIOUS_CHAMPION: "1"}

    set_alias = MlflowClient.set_registered_model_alias

    def fail_on_champion(self, name, alias, version):
        if alias == CHAMPION:
            raise RuntimeError("injected failure while moving champion")
        return set_alias(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail_on_champion)
    with pytest.raises(RuntimeError, match="injected failure"):
        _register(_constant_model(tmp_path, "0"), gate_sets, dataclasses.replace(config, non_inferiority_margin=0.5))
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias)
    assert [v.version for v in _versions(config.model_name)] == ["1", "2"]  # version 3 deleted
    assert aliases_of(MlflowClient(), config.model_name) == before


def test_server_killed_after_create_gives_a_clear_error_and_no_usable_version(
    tracking, gate_sets, tmp_path, monkeypatch
):
    config = RegistryConfig(model_name=f"crash-{uuid.uuid4().hex[:8]}", max_shift_drop=0.5)
    _register(_constant_model(tmp_path, "1"), gate_sets, config)
    model, parent_run_id = _constant_model(tmp_path, "0"), start_parent_run("test_registry", {})

    real_register_model = mlflow.register_model

    def register_then_crash(*args, **kwargs):
        version = real_register_model(*args, **kwargs)
        tracking.kill()
        return version

    monkeypatch.setattr(mlflow, "register_model", register_then_crash)
    started = time.monotonic()
    with pytest.raises(
        FlyteRecoverableException,
        match=r"TrackingServerUnavailable: MLflow tracking server " + tracking.uri.replace(".", r"\."),
    ):
        _register(model, gate_sets, config, parent_run_id)  # an outage: Flyte retries the task
    assert time.monotonic() - started < 60, "bounded retries"
    monkeypatch.setattr(mlflow, "register_model", real_register_model)

    tracking.start()  # same store: what did the crash leave?
    left = _versions(config.model_name)
    assert [(v.version, v.tags[STATE_TAG]) for v in left] == [("1", COMPLETE), ("2", INCOMPLETE)]
    assert aliases_of(MlflowClient(), config.model_name) == {CHAMPION: "1", CHALLENGER: "1"}

    # the retry of the same pipeline run removes the leftover and registers properly
    retried = _register(model, gate_sets, config, parent_run_id)
    assert (retried.version, retried.promoted) == ("3", True)
    assert [(v.version, v.tags[STATE_TAG]) for v in _versions(config.model_name)] == [("1", COMPLETE), ("3", COMPLETE)]
    assert aliases_of(MlflowClient(), config.model_name) == {CHAMPION: "3", CHALLENGER: "3", PREVIOUS_CHAMPION: "1"}


@pytest.fixture
def dead_server(monkeypatch):
    """A URI where no server listens."""
    _few_fast_retries(monkeypatch)
    with mlflow_at(monkeypatch, f"http://127.0.0.1:{free_port()}"):
        yield


def test_server_down_fails_fast_with_a_clear_message(dead_server):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    started = time.monotonic()
    with pytest.raises(TrackingServerUnavailable) as error:
        start_parent_run("ssl_pipeline", {"a": 1})
    assert uri in str(error.value) and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in str(error.value)
    assert time.monotonic() - started < 30


def test_a_cluster_pod_without_tracking_uri_says_what_to_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("FLYTE_INTERNAL_EXECUTION_ID", "f1234")
    with pytest.raises(RuntimeError, match="--env MLFLOW_TRACKING_URI="):
        tracking_uri()


def test_a_champion_that_cannot_be_loaded_is_a_reported_decision_not_a_blocked_registry(tracking, gate_sets, tmp_path):
    config = RegistryConfig(model_name=f"unloadable-{uuid.uuid4().hex[:8]}")
    assert _register(_constant_model(tmp_path, "1"), gate_sets, config).champion_version == "1"
    champion = MlflowClient().get_model_version(config.model_name, "1")
    artifacts = tracking.root / "artifacts"
    logged_model = champion.source.rsplit("/", 1)[-1]  # MLflow 3: models:/<logged model id>, stored under models/<id>
    model_files = [path for path in artifacts.rglob("*") if path.is_file() and logged_model in str(path)]
    assert model_files, "the champion's files are on the server"
    for path in model_files:
        path.unlink()  # e.g. a bucket lifecycle rule removed them
    second = _register(_constant_model(tmp_path, "0"), gate_sets, config)
    assert (second.version, second.promoted, second.champion_version) == ("2", False, "1")
    assert "champion version 1 cannot be loaded or scored" in second.decision
    tags = MlflowClient().get_model_version(config.model_name, "2").tags
    assert tags[STATE_TAG] == COMPLETE and "cannot be loaded" in tags["gate.decision"]


def test_class_names_with_commas_survive_the_registry(tracking, tmp_path):
    classes = ["cat, black", "dog", "cow"]
    root = tmp_path / "datasets"
    sets = (
        _dataset(root, "in-domain", {"cat, black": 5, "dog": 3, "cow": 2}),
        _dataset(root, "shift", {"cat, black": 2, "dog": 3, "cow": 5}),
    )
    config = RegistryConfig(model_name=f"commas-{uuid.uuid4().hex[:8]}")
    assert _register(_constant_model(tmp_path, "dog", classes), sets, config).promoted
    assert json.loads(MlflowClient().get_model_version(config.model_name, "1").tags["class_names"]) == classes
    second = _register(_constant_model(tmp_path, "cat, black", classes), sets, config)  # better in-domain, worse shift
    assert (
        not second.promoted and "shift 0.2000 vs champion 0.3000" in second.decision
    )  # compared, not "cannot be scored"


def test_the_gate_never_reads_the_test_split(tracking, tmp_path):
    """Poisoned test splits (every label "1", which the first challenger always predicts) change no accuracy
    and no decision: the gate scores on the gate split only."""
    clean = (
        _dataset(tmp_path, "in-clean", {"0": 5, "1": 3, "2": 2}),
        _dataset(tmp_path, "shift-clean", {"0": 2, "1": 3, "2": 5}),
    )
    poisoned = (
        _dataset(tmp_path, "in-poisoned", {"0": 5, "1": 3, "2": 2}, test_counts={"1": 40}),
        _dataset(tmp_path, "shift-poisoned", {"0": 2, "1": 3, "2": 5}, test_counts={"1": 40}),
    )
    outcomes = []
    for sets in (clean, poisoned):
        config = RegistryConfig(model_name=f"poison-{uuid.uuid4().hex[:8]}")
        registrations = [_register(_constant_model(tmp_path, predicted), sets, config) for predicted in ("0", "1")]
        outcomes.append([(r.in_domain_accuracy, r.shift_accuracy, r.promoted, r.decision) for r in registrations])
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][1][:3] == (
        0.3,
        0.3,
        False,
    )  # "1" is 3 of 10 gate labels; on the poisoned test split it would score 1.0


def test_gate_split_is_disjoint_from_test_and_stable_as_cases_are_added():
    from sslflow.data.manifest import split_of_case

    cases = [f"case-{i}" for i in range(2000)]
    splits = {case: split_of_case(case, 0, 0.7, 0.1, 0.1) for case in cases}
    assert {split: list(splits.values()).count(split) for split in ("train", "val", "gate", "test")} == pytest.approx(
        {"train": 1400, "val": 200, "gate": 200, "test": 200}, abs=60
    )
    assert all(
        split_of_case(case, 0, 0.7, 0.1, 0.1) == splits[case] for case in cases[:500]
    )  # by case alone, whatever else is ingested
    assert all(
        split_of_case(case, 0, 0.0, 0.0, 0.1) in ("gate", "test") for case in cases
    )  # all_test sources: gate + test


def test_gate_fraction_is_checked_with_the_other_fractions():
    from sslflow.config import IngestConfig

    with pytest.raises(ValueError, match="gate_fraction=0.3 must be >= 0 and sum to <= 1"):
        IngestConfig(gate_fraction=0.3)  # 0.7 + 0.1 + 0.3
    assert (
        IngestConfig(all_test=True, gate_fraction=0.3).gate_fraction == 0.3
    )  # an all-test source has no train or val share
