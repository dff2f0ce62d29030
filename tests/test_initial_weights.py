"""The user's initial weights from a local file, an S3 object (a moto server) and MLflow (a runs:/ artifact and a
registered models:/ version): fetched, hashed, checked against the backbone, adapted to one channel; the generic
rung of the ladder starts from them and its lineage (source, sha256) reaches MLflow and the registry's tags.
The checkpoints are timm/torchvision networks the tests create and save (nothing is downloaded)."""

from __future__ import annotations

import uuid

import mlflow
import pytest
import torch
from flytekit import workflow
from inprocess_elastic import with_inprocess_elastic
from moto_s3 import moto_s3_server, s3_environment

from ssl_models.pretraining import PretrainConfig
from sslflow.config import IngestConfig
from sslflow.files import file_sha256
from sslflow.ladder import LadderError, check_initial_weights
from sslflow.registry.registration import initial_weights_tags
from sslflow.tracking.initial_weights import InitialWeightsError, encoder_from_weights
from sslflow.tracking.runs import start_parent_run
from sslflow.training.model_files import load_encoder
from tasks.ingest import source_fingerprint
from tasks.pretrain import pretrain_generic
from tasks.shared import EncoderCheckpoint, FinetunedModel
from workflows.ingest import ingest

BACKBONE = "timm:resnet18"


@pytest.fixture(scope="module")
def imagenet_style(tmp_path_factory):
    """(a timm ResNet-18 with 3 input channels and a 1000-class head, its state dict saved as timm saves it)."""
    import timm

    network = timm.create_model("resnet18", num_classes=1000).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18_rgb.pth"
    torch.save(network.state_dict(), path)
    return network, path


def _same_network(encoder, network) -> bool:
    """The encoder computes the RGB network's features of a grey image (its first layer summed over RGB)."""
    grey = torch.rand(2, 1, 32, 32)
    network.reset_classifier(0)
    with torch.no_grad():
        return torch.allclose(encoder.eval()(grey), network(grey.expand(-1, 3, -1, -1)), atol=1e-4)


def test_local_file_is_checked_adapted_and_hashed(imagenet_style, tmp_path):
    network, path = imagenet_style
    encoder, weights = encoder_from_weights(str(path), BACKBONE, 1, 32, tmp_path)
    assert weights.source == str(path) and weights.sha256 == file_sha256(path)
    assert _same_network(encoder, network)


def test_s3_object_is_downloaded_and_loaded(imagenet_style, tmp_path, monkeypatch):
    import boto3

    network, path = imagenet_style
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        boto3.client("s3").create_bucket(Bucket="weights")
        boto3.client("s3").upload_file(str(path), "weights", "imagenet/resnet18.pth")
        encoder, weights = encoder_from_weights("s3://weights/imagenet/resnet18.pth", BACKBONE, 1, 32, tmp_path)
        assert weights.sha256 == file_sha256(path) and _same_network(encoder, network)
        with pytest.raises(InitialWeightsError, match=r"s3://weights/imagenet/missing\.pth.*S3 error"):
            encoder_from_weights("s3://weights/imagenet/missing.pth", BACKBONE, 1, 32, tmp_path)


def test_mlflow_run_artifact_and_registered_model_are_loaded(imagenet_style, tmp_path):
    network, path = imagenet_style
    # the store's Default experiment keeps artifacts in ./mlruns, the project folder; this test's stay in tmp_path
    experiment = mlflow.create_experiment(f"weights-{uuid.uuid4().hex[:8]}", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(path), artifact_path="weights")
    encoder, weights = encoder_from_weights(
        f"runs:/{run.info.run_id}/weights/resnet18_rgb.pth", BACKBONE, 1, 32, tmp_path / "a"
    )
    assert weights.sha256 == file_sha256(path) and _same_network(encoder, network)
    name = f"user-encoder-{uuid.uuid4().hex[:8]}"
    grey_network = encoder_from_weights(str(path), BACKBONE, 1, 32, tmp_path)[
        0
    ]  # a registered 1-channel encoder of this project
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pytorch.log_model(
            grey_network.eval(),
            name="model",
            registered_model_name=name,
            pip_requirements=["torch"],
            input_example=torch.zeros(1, 1, 32, 32).numpy(),
        )
    encoder, weights = encoder_from_weights(f"models:/{name}/1", BACKBONE, 1, 32, tmp_path / "b")
    assert len(weights.sha256) == 64 and _same_network(encoder, network)


def test_weights_that_do_not_fit_or_do_not_exist_are_refused(imagenet_style, tmp_path):
    _, path = imagenet_style
    with pytest.raises(
        InitialWeightsError,
        match=(
            r"keys the backbone does not have.*encoder_name='timm:resnet34'"
            r"|backbone keys missing.*encoder_name='timm:resnet34'"
        ),
    ):
        encoder_from_weights(str(path), "timm:resnet34", 1, 32, tmp_path)
    with pytest.raises(InitialWeightsError, match="no such file"):
        encoder_from_weights(str(tmp_path / "absent.pth"), BACKBONE, 1, 32, tmp_path)
    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(InitialWeightsError, match="notes.pt: not a PyTorch state dict"):
        encoder_from_weights(str(tmp_path / "notes.pt"), BACKBONE, 1, 32, tmp_path)
    with pytest.raises(LadderError, match="initial_weights.*generic rung's configuration"):
        check_initial_weights("domain", str(path))


@workflow
def _generic_rung_from_weights(run_id: str, config: PretrainConfig) -> EncoderCheckpoint:
    dataset = ingest(
        source="mnist-5k",
        fingerprint=source_fingerprint(source="mnist-5k"),
        config=IngestConfig(max_images=100),
        parent_run_id=run_id,
    )
    return pretrain_generic(dataset=dataset, encoder_name=BACKBONE, config=config, parent_run_id=run_id)


def test_the_generic_rung_starts_from_the_users_weights_and_records_them(imagenet_style, monkeypatch):
    """epochs=0: the user's weights are the generic rung as they are; their source and sha256 are the stage run's
    params, the encoder's lineage, and the tags a registered model of its ladder carries."""
    with_inprocess_elastic(monkeypatch)  # the subject is the task, not the launcher (test_elastic)
    network, path = imagenet_style
    config = PretrainConfig(epochs=0, initial_weights=str(path))
    encoder = _generic_rung_from_weights(run_id=start_parent_run("weights-rung-test", {}), config=config)
    assert (encoder.initial_weights, encoder.initial_weights_sha256) == (str(path), file_sha256(path))
    params = mlflow.tracking.MlflowClient().get_run(encoder.mlflow_run_id).data.params
    assert params["initial_weights.source"] == str(path) and params["initial_weights.sha256"] == file_sha256(path)
    assert _same_network(load_encoder(encoder.checkpoint.download(), BACKBONE, 1, 28), network)
    model = FinetunedModel(
        checkpoint=encoder.checkpoint,
        encoder_name=BACKBONE,
        in_channels=1,
        image_size=28,
        class_names=["0"],
        init="simclr",
        probe="finetune",
        label_fraction=0.1,
        num_labels=5,
        val_accuracy=0.5,
        content_sha256="0" * 64,
        mlflow_run_id="",
        initial_weights=encoder.initial_weights,
        initial_weights_sha256=encoder.initial_weights_sha256,
    )
    assert initial_weights_tags(model) == {
        "initial_weights.source": str(path),
        "initial_weights.sha256": file_sha256(path),
    }
