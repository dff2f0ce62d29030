"""Distillation from a teacher the user supplies (ssl_models/methods/distill.py): the frozen teacher's features
taught to the deployed backbone, in the registry, through the pretraining task with the teacher's weights from a
file the test writes (its source and sha256 recorded)."""

from __future__ import annotations

import mlflow
import pytest
import torch
import torch.nn.functional as F
from flytekit import workflow
from inprocess_elastic import with_inprocess_elastic

from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.methods import METHODS, build_method
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from sslflow.config import IngestConfig
from sslflow.files import file_sha256
from sslflow.tracking.runs import start_parent_run
from tasks.ingest import source_fingerprint
from tasks.pretrain import pretrain_generic
from tasks.shared import EncoderCheckpoint
from workflows.ingest import ingest


def _blocky(n: int = 48) -> torch.Tensor:
    return F.interpolate(
        torch.randint(0, 256, (n, 1, 4, 4), generator=torch.Generator().manual_seed(0)).float(), size=16, mode="nearest"
    ).to(torch.uint8)


def test_the_student_learns_the_frozen_teachers_features():
    """A timm ResNet-18 teacher (fixed weights) taught to a small_cnn student: the loss falls, the teacher does not
    change and stays in eval mode, the student's features come to predict the teacher's."""
    teacher = build_encoder("timm:resnet18", 1, 16, seed=1).eval()
    frozen = {key: value.clone() for key, value in teacher.state_dict().items()}
    config = PretrainConfig(
        method="distill",
        epochs=5,
        batch_size=16,
        learning_rate=3e-3,
        method_settings={"teacher": "timm:resnet18", "teacher_weights": "test"},
        augment=AugmentConfig(output_size=16, crop_scale=(0.6, 1.0)),
    )
    states = []
    history = pretrain_contrastive(
        build_encoder("small_cnn", 1, seed=0),
        InMemoryPairs(_blocky(), list(range(48))),
        config,
        teacher=teacher,
        on_epoch_end=lambda epoch, metrics, state_fn: states.append(state_fn()["model"]),
    )
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert all(torch.equal(states[-1][f"teacher.{key}"], value) for key, value in frozen.items())
    assert METHODS["distill"].label == "distillation"


def test_distillation_needs_a_teacher_and_the_others_take_none():
    with pytest.raises(ValueError, match="set teacher .* and teacher_weights"):
        PretrainConfig(method="distill")
    encoder = build_encoder("small_cnn", 1)
    with pytest.raises(ValueError, match="needs a teacher"):
        build_method(
            "distill",
            encoder,
            PretrainConfig(method="distill", method_settings={"teacher": "small_cnn", "teacher_weights": "x"}),
        )
    with pytest.raises(ValueError, match="takes no teacher"):
        build_method("simclr", encoder, PretrainConfig(), teacher=build_encoder("small_cnn", 1))
    method = build_method(
        "distill",
        encoder,
        PretrainConfig(method="distill", method_settings={"teacher": "small_cnn", "teacher_weights": "x"}),
        teacher=build_encoder("small_cnn", 1),
    )
    assert not method.train().teacher.training and not any(p.requires_grad for p in method.teacher.parameters())


@workflow
def _distilled_rung(run_id: str, config: PretrainConfig) -> EncoderCheckpoint:
    dataset = ingest(
        source="mnist-5k",
        fingerprint=source_fingerprint(source="mnist-5k"),
        config=IngestConfig(max_images=100),
        parent_run_id=run_id,
    )
    return pretrain_generic(dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)


def test_the_pretraining_task_distils_the_teacher_from_the_users_weights_file(tmp_path, monkeypatch):
    """A teacher saved as a 3-channel timm checkpoint (an ImageNet-style download) teaches the 1-channel pipeline's
    small_cnn; the stage run records the teacher, its weights' source and sha256; the arm is the method's."""
    with_inprocess_elastic(monkeypatch)  # the subject is the task, not the launcher (test_elastic)
    import timm

    path = tmp_path / "teacher.pth"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), path)
    config = PretrainConfig(
        method="distill",
        epochs=1,
        batch_size=50,
        method_settings={"teacher": "timm:resnet18", "teacher_weights": str(path)},
    )
    encoder = _distilled_rung(run_id=start_parent_run("distill-task-test", {}), config=config)
    assert encoder.arm == "distill" and encoder.collapsed == ""
    params = mlflow.tracking.MlflowClient().get_run(encoder.mlflow_run_id).data.params
    assert (params["teacher"], params["teacher.source"], params["teacher.sha256"]) == (
        "timm:resnet18",
        str(path),
        file_sha256(path),
    )
