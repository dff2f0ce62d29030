"""The self-supervised methods as plug-ins: each one's loss and shapes, its state (MoCo's queue and key
encoder, BYOL's target) updated by training and restored on resume, and MICLe's case pairs with each."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.evaluate import KnnMonitor
from ssl_models.losses import info_nce_with_queue, normalized_mse
from ssl_models.methods import METHODS, build_method
from ssl_models.methods.base import cosine_momentum
from ssl_models.methods.byol import BYOL
from ssl_models.methods.moco import MoCoV2
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive

VIEW = AugmentConfig(output_size=16)
STATE_KEYS = {
    "moco": ("queue", "queue_pointer", "key_encoder.layers.0.weight"),
    "byol": ("target_encoder.layers.0.weight", "target_projection.layers.0.weight"),
}


def _images(n: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_info_nce_with_queue_matches_hand_computed_value():
    # One query, its key identical (similarity 1), two orthogonal queue entries (similarity 0), tau = 1.
    query, queue = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert info_nce_with_queue(query, query.clone(), queue, 1.0).item() == pytest.approx(
        math.log(1 + 2 / math.e), abs=1e-6
    )


def test_moco_shapes_queue_and_arguments():
    moco = MoCoV2(build_encoder("small_cnn", 1, seed=0), projection_dim=8, queue_size=8)
    loss = moco(torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16))
    assert loss.dim() == 0 and loss.requires_grad and moco.queue.shape == (8, 8)
    assert not any(p.requires_grad for p in moco.key_encoder.parameters())
    moco.after_step(0.5)  # enqueues the 2 x 3 keys (both views) at rows 0-5
    first_keys = moco.queue[:6].clone()
    moco(torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16))
    moco.after_step(0.6)  # the next 6 go to rows 6, 7, 0, 1, 2, 3: the oldest are overwritten first
    assert (
        int(moco.queue_pointer) == 4
        and torch.equal(moco.queue[4:6], first_keys[4:6])
        and not torch.equal(moco.queue[:4], first_keys[:4])
    )
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(8))
    for bad in (dict(temperature=0.0), dict(queue_size=0), dict(momentum=1.0)):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            MoCoV2(build_encoder("small_cnn", 1), **bad)


def test_byol_loss_values_shapes_and_momentum_schedule():
    z = torch.randn(4, 8)
    assert normalized_mse(z, 3 * z).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_mse(z, -z).item() == pytest.approx(4.0, abs=1e-5)
    byol = BYOL(build_encoder("small_cnn", 1, seed=0), projection_dim=8)
    loss = byol(torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16))
    assert loss.dim() == 0 and 0.0 <= loss.item() <= 8.0
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99) and cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="momentum"):
        BYOL(build_encoder("small_cnn", 1), momentum=1.0)


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="byol"):
        PretrainConfig(method="swav")
    with pytest.raises(ValueError, match="unknown self-supervised method 'swav'"):
        build_method("swav", build_encoder("small_cnn", 1), PretrainConfig())


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_training_lowers_the_loss_and_moves_the_target(method):
    """Blocky images (4x4 patterns at 16 px) that mild crops leave recognisable. MoCo's first epoch scores
    against a queue of random vectors (easy negatives), so its loss is compared from the second epoch on."""
    blocky = F.interpolate(
        torch.randint(0, 256, (48, 1, 4, 4), generator=torch.Generator().manual_seed(0)).float(),
        size=16,
        mode="nearest",
    ).to(torch.uint8)
    view = AugmentConfig(output_size=16, crop_scale=(0.6, 1.0))
    settings = {"queue_size": 16, "momentum": 0.9} if method == "moco" else {"momentum": 0.9}
    config = PretrainConfig(
        method=method, epochs=6, batch_size=16, learning_rate=3e-3, augment=view, method_settings=settings
    )
    states = []
    history = pretrain_contrastive(
        build_encoder("small_cnn", 1, seed=0),
        InMemoryPairs(blocky, list(range(48))),
        config,
        on_epoch_end=lambda epoch, metrics, state_fn: states.append(copy.deepcopy(state_fn()["model"])),
    )
    assert history[-1]["loss"] < 0.95 * history[1 if method == "moco" else 0]["loss"]
    target = "key_encoder" if method == "moco" else "target_encoder"
    first, last = states[0], states[-1]
    assert not torch.equal(first[f"{target}.layers.0.weight"], last[f"{target}.layers.0.weight"])  # the target moved
    assert not torch.equal(
        last[f"{target}.layers.0.weight"], last["encoder.layers.0.weight"]
    )  # and lags the online network
    if method == "moco":
        assert not torch.equal(first["queue"], last["queue"])


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_resume_restores_the_method_state(method):
    """A run killed after epoch 0 and resumed ends where the uninterrupted run ends: queue, key encoder, target."""
    settings = {"queue_size": 40} if method == "moco" else {}
    config = PretrainConfig(method=method, epochs=3, batch_size=16, augment=VIEW, method_settings=settings)
    states = {}

    def keep(epoch, metrics, state_fn):
        states.setdefault("run", {})[epoch] = copy.deepcopy(state_fn())

    full = pretrain_contrastive(
        build_encoder("small_cnn", 1, seed=0), InMemoryPairs(_images(), list(range(48))), config, on_epoch_end=keep
    )
    uninterrupted, resumed_from = states["run"][2]["model"], states["run"][0]
    states.clear()
    resumed = pretrain_contrastive(
        build_encoder("small_cnn", 1, seed=0),
        InMemoryPairs(_images(), list(range(48))),
        config,
        on_epoch_end=keep,
        resume_state=resumed_from,
    )
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[1:]], rel=1e-4)
    for key in STATE_KEYS[method]:
        assert torch.allclose(states["run"][2]["model"][key].float(), uninterrupted[key].float(), atol=1e-5), key
    fresh = build_method(
        method, build_encoder("small_cnn", 1, seed=0), config
    ).state_dict()  # the state is not the initial one
    assert not torch.equal(fresh[STATE_KEYS[method][0]], uninterrupted[STATE_KEYS[method][0]])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_micle_case_pairs_train_every_method(method):
    """Two images of one case as the two views (case ids i // 2): each method trains on them and so does the kNN
    monitor."""
    images, labels = _images(32), torch.arange(32) % 2
    monitor = KnnMonitor(images[:24], labels[:24], images[24:], labels[24:], VIEW, k=5)
    encoder = build_encoder("small_cnn", 1, seed=0)
    before = copy.deepcopy(encoder.state_dict())
    teacher = (
        build_encoder("small_cnn", 1, seed=1) if METHODS[method].needs_teacher else None
    )  # distillation's frozen teacher
    settings = {
        "distill": {"teacher": "small_cnn", "teacher_weights": "given as a module"},
        "moco": {"queue_size": 32},
    }.get(method, {})
    config = PretrainConfig(method=method, epochs=2, batch_size=16, augment=VIEW, method_settings=settings)
    history = pretrain_contrastive(
        encoder, InMemoryPairs(images, [i // 2 for i in range(32)]), config, monitor=monitor, teacher=teacher
    )
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["knn_accuracy"] <= 1.0 for r in history)
    assert not torch.equal(before["layers.0.weight"], encoder.state_dict()["layers.0.weight"])


def test_knn_monitor_measures_features_not_noise():
    """kNN on features that separate the classes is right; the monitor leaves the encoder's mode as it was."""
    images = torch.zeros(40, 1, 4, 4, dtype=torch.uint8)
    labels = torch.arange(40) % 2
    images[labels == 1] = 255

    class Mean(torch.nn.Module):
        feature_dim = 2

        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), torch.ones(len(x))], dim=1)

    encoder = Mean().train()
    monitor = KnnMonitor(images[:30], labels[:30], images[30:], labels[30:], AugmentConfig(output_size=4), k=5)
    assert monitor(encoder) == 1.0 and encoder.training
    assert (
        KnnMonitor(images[:30], labels[:30], images[30:], 1 - labels[30:], AugmentConfig(output_size=4), k=5)(encoder)
        == 0.0
    )
    with pytest.raises(ValueError, match="one label per"):
        KnnMonitor(images[:30], labels[:29], images[30:], labels[30:], AugmentConfig(output_size=4))
