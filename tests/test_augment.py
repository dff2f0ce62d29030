import pytest
import torch

from ssl_models.augment import AugmentConfig, augment, normalise


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(channels):
    images = torch.randint(0, 256, (16, channels, 40, 32), dtype=torch.uint8)
    config = AugmentConfig(output_size=24, flip_probability=0.5)
    views = augment(images, config)
    assert views.shape == (16, channels, 24, 24) and views.dtype == torch.float32
    unnormalised = views * config.std + config.mean
    assert unnormalised.min() >= -1e-5 and unnormalised.max() <= 1 + 1e-5


def test_each_sample_gets_its_own_random_parameters():
    image = torch.randint(0, 256, (1, 3, 28, 28), dtype=torch.uint8)
    views = augment(image.repeat(8, 1, 1, 1), AugmentConfig())
    distinct = {tuple(view.flatten()[:50].tolist()) for view in views}
    assert len(distinct) == 8  # torchvision v2 would give one draw for the whole batch


def test_generator_makes_views_reproducible():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    first = augment(images, AugmentConfig(), torch.Generator().manual_seed(7))
    second = augment(images, AugmentConfig(), torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_identity_settings_reproduce_the_image():
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    config = AugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        rotation_degrees=0.0,
        jitter_probability=0.0,
        grayscale_probability=0.0,
        blur_probability=0.0,
    )
    assert torch.allclose(augment(images, config), normalise(images, config), atol=1e-5)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="batch, channels"):
        augment(torch.zeros(28, 28, dtype=torch.uint8), AugmentConfig())
