"""DINO (ssl_models/methods/dino.py): its loss, multi-crop through the loop, MICLe case pairs as the global views,
the collapse monitor (a run without sharpening collapses and says so), and two gloo ranks sharing one centre."""

from __future__ import annotations

import math
import socket

import mlflow
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from flytekit import workflow
from inprocess_elastic import with_inprocess_elastic
from ranks import spawn_ranks

from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.finetuning import FinetuneConfig
from ssl_models.losses import dino_loss
from ssl_models.methods import METHODS
from ssl_models.methods.dino import DINO, teacher_statistics
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from sslflow.config import IngestConfig
from sslflow.tracking.runs import start_parent_run
from tasks.finetune import finetune_pretrained
from tasks.ingest import source_fingerprint
from tasks.pretrain import pretrain_generic
from tasks.shared import FinetunedModel
from workflows.ingest import ingest

VIEW = AugmentConfig(output_size=16)


def _images(n: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_dino_loss_matches_hand_computed_values():
    """Equal logits: every distribution uniform over K = 4, each cross-entropy log 4; a student that puts the teacher's
    class first scores lower than one that puts it last."""
    flat = [torch.zeros(3, 4) for _ in range(3)]  # two global views and a local one
    assert dino_loss(flat, flat[:2], torch.zeros(1, 4), 0.04).item() == pytest.approx(math.log(4), abs=1e-6)
    teacher = [torch.tensor([[1.0, 0.0, 0.0, 0.0]])] * 2
    agreeing, disagreeing = [torch.tensor([[1.0, 0.0, 0.0, 0.0]])] * 2, [torch.tensor([[0.0, 0.0, 0.0, 1.0]])] * 2
    assert dino_loss(agreeing, teacher, torch.zeros(1, 4), 0.04) < dino_loss(
        disagreeing, teacher, torch.zeros(1, 4), 0.04
    )


def test_collapse_monitor_tells_uniform_one_dimension_and_healthy_teachers_apart():
    log_k = math.log(64)

    def reason(teacher: torch.Tensor) -> str:
        entropy, kl, share = teacher_statistics(teacher, torch.zeros(1, 64), 0.04)
        return DINO.collapse_reason(
            {"teacher_entropy": entropy, "kl_to_uniform": kl, "mean_entropy_share": share, "log_prototypes": log_k}
        )

    assert reason(torch.eye(64)[:32]) == ""  # each image its own sharp distribution
    assert "one dimension" in reason(torch.eye(64)[[3] * 32])  # every image the same dimension
    assert "uniform" in reason(torch.zeros(32, 64))  # every image the uniform distribution
    with pytest.raises(ValueError, match="teacher temperatures"):
        DINO(build_encoder("small_cnn", 1), teacher_temperature=0.0)


def test_dino_trains_with_local_crops_and_case_pairs(monkeypatch):
    """Two global views (two images of one case: MICLe) and two local crops (96/224 of the side, at least 8 px) reach
    forward; the teacher and the centre move; the monitor's measures join the epoch's metrics."""
    seen = []
    forward = DINO.forward

    def recording(self, views_a, views_b, *local_views):
        seen.append([tuple(v.shape[-2:]) for v in (views_a, views_b, *local_views)])
        return forward(self, views_a, views_b, *local_views)

    monkeypatch.setattr(DINO, "forward", recording)
    states = []
    config = PretrainConfig(
        method="dino", epochs=1, batch_size=16, augment=VIEW, method_settings={"prototypes": 64, "local_crops": 2}
    )
    pairs = InMemoryPairs(_images(), [i // 2 for i in range(32)])
    history = pretrain_contrastive(
        build_encoder("small_cnn", 1, seed=0),
        pairs,
        config,
        on_epoch_end=lambda epoch, metrics, state_fn: states.append(state_fn()["model"]),
    )
    assert seen[0] == [(16, 16), (16, 16), (8, 8), (8, 8)] and len(seen) == 2
    assert {"teacher_entropy", "kl_to_uniform", "mean_entropy_share"} <= set(history[0]) and math.isfinite(
        history[0]["loss"]
    )
    model = states[0]
    assert model["center"].abs().sum() > 0 and not torch.equal(
        model["teacher_head.prototypes"], model["head.prototypes"]
    )
    assert "dino" in METHODS


def test_a_dino_run_without_sharpening_collapses_and_says_so():
    """Teacher temperature 1 (no sharpening; the paper's Fig. 7 ablation): the teacher hands every image the uniform
    distribution, and the monitor's verdict on the last epoch says so."""
    config = PretrainConfig(
        method="dino",
        epochs=2,
        batch_size=16,
        augment=VIEW,
        method_settings={"teacher_temperature": 1.0, "teacher_warmup_temperature": 1.0},
    )
    history = pretrain_contrastive(
        build_encoder("small_cnn", 1, seed=0), InMemoryPairs(_images(), list(range(32))), config
    )
    assert "collapsed to the uniform distribution" in METHODS["dino"].collapse_reason(history[-1])
    assert history[-1]["teacher_entropy"] > 0.95 * math.log(config.settings.prototypes)


WORLD_SIZE = 2


def _dino_worker(rank: int, port: int, results) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", 1)  # same initial weights on both ranks, as DDP requires
    config = PretrainConfig(
        method="dino", epochs=1, batch_size=8, augment=VIEW, method_settings={"prototypes": 32, "local_crops": 1}
    )
    states = []
    pairs = InMemoryPairs(_images(), [i // 2 for i in range(32)], seed=0)
    history = pretrain_contrastive(
        encoder, pairs, config, on_epoch_end=lambda epoch, metrics, state_fn: states.append(state_fn()["model"])
    )
    results[rank] = (
        history[0]["loss"],
        history[0]["teacher_entropy"],
        states[0]["center"].clone(),
        states[0]["head.prototypes"].clone(),
    )
    dist.destroy_process_group()


def test_dino_under_ddp_keeps_one_centre_and_one_student():
    """Two gloo ranks: the centre is the mean over both ranks' teacher outputs, so it is the same on each; so are
    the student's weights (DDP) and the logged loss and monitor (means over ranks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    spawn_ranks(_dino_worker, args=(port, results), nprocs=WORLD_SIZE)
    (loss_0, entropy_0, center_0, head_0), (loss_1, entropy_1, center_1, head_1) = results[0], results[1]
    assert (loss_0, entropy_0) == (loss_1, entropy_1)
    assert torch.allclose(center_0, center_1, atol=1e-6) and center_0.abs().sum() > 0
    assert torch.allclose(head_0, head_1, atol=1e-6)


@workflow
def _collapsing_dino_rung(run_id: str, config: PretrainConfig, finetune_config: FinetuneConfig) -> FinetunedModel:
    dataset = ingest(
        source="mnist-5k",
        fingerprint=source_fingerprint(source="mnist-5k"),
        config=IngestConfig(max_images=100),
        parent_run_id=run_id,
    )
    encoder = pretrain_generic(dataset=dataset, encoder_name="small_cnn", config=config, parent_run_id=run_id)
    return finetune_pretrained(
        domain=dataset, encoder=encoder, label_fraction=1.0, config=finetune_config, parent_run_id=run_id
    )


def test_a_collapsed_pretraining_stage_is_tagged_and_its_models_are_not_selectable(monkeypatch):
    """The pipeline's tasks: the collapsed DINO rung's MLflow run carries the reason, and the model fine-tuned from it
    is evaluated but never selected (FinetunedModel.selectable)."""
    with_inprocess_elastic(monkeypatch)  # the subject is the task, not the launcher (test_elastic)
    config = PretrainConfig(
        method="dino",
        epochs=1,
        batch_size=32,
        method_settings={"teacher_temperature": 1.0, "teacher_warmup_temperature": 1.0, "prototypes": 64},
    )
    finetune_config = FinetuneConfig(epochs=1, head_warmup_steps=0, batch_size=32)
    model = _collapsing_dino_rung(
        run_id=start_parent_run("dino-collapse-test", {}), config=config, finetune_config=finetune_config
    )
    assert model.selectable is False and model.init == "dino"
    encoder_run = mlflow.tracking.MlflowClient().get_run(
        mlflow.tracking.MlflowClient().get_run(model.mlflow_run_id).data.params["encoder.mlflow_run_id"]
    )
    assert "collapsed to the uniform distribution" in encoder_run.data.tags["collapsed"]
