"""A new user's small folder: it must not crash, and what refuses it must say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_models.proxy_cases import PROXY_PREFIX, pixel_neighbour_proxy_cases
from sslflow.config import IngestConfig
from sslflow.data.builtin import read_mnist_5k
from sslflow.data.chunks import ingest_source


def _digit_folder(root: Path, count: int) -> Path:
    """``count`` MNIST digits saved as PNG files in ``root``."""
    root.mkdir(parents=True)
    digits = read_mnist_5k()
    for i in range(count):
        Image.fromarray(digits.pixels[i * 499 % len(digits.pixels), 0]).save(root / f"scan{i}.png")
    return root


@pytest.mark.parametrize("count", [1, 2, 3, 8, 9])
def test_proxy_cases_group_any_number_of_images(count):
    """Eight or fewer images have fewer than eight neighbours each; they are still paired."""
    pixels = read_mnist_5k().pixels[:count]
    case_ids = pixel_neighbour_proxy_cases(pixels)
    assert len(case_ids) == count and all(case.startswith(PROXY_PREFIX) for case in case_ids)
    sizes = sorted(case_ids.count(case) for case in set(case_ids))
    assert sizes == [1] * (count % 2) + [2] * (count // 2)  # pairs, and one left alone when the count is odd
    assert pixel_neighbour_proxy_cases(pixels[:0]) == []


def test_a_folder_of_five_images_is_ingested_with_proxy_cases(tmp_path):
    folder = _digit_folder(tmp_path / "scans", 5)
    _, manifest, _ = ingest_source(str(folder), IngestConfig(proxy_cases=True), tmp_path / "dataset")
    assert len(manifest) == 5 and manifest["case_id_is_proxy"].all()
    assert manifest["case_id"].nunique() == 3  # two pairs and one single image
