"""decoded_table's memory is bounded by the chunk's images, not 8 x them: numpy's std over a whole chunk made a
float64 copy of every pixel (a 4,000-image chunk at 224 px peaked at 2 GiB for 196 MB of images)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from sslflow.config import IngestConfig
from sslflow.data.manifest import decoded_table
from sslflow.data.types import SourceImages


def _images(count: int, side: int) -> SourceImages:
    pixels = np.random.default_rng(0).integers(0, 256, (count, 1, side, side), dtype=np.uint8)
    return SourceImages(
        pixels=pixels,
        source_paths=[f"image{i}.png" for i in range(count)],
        labels=[None] * count,
        case_ids=None,
        sites=["default"] * count,
        size_bytes=[1] * count,
        modes=["L"] * count,
        widths=[side] * count,
        heights=[side] * count,
    )


def test_pixel_statistics_take_a_fraction_of_a_float64_copy_of_the_chunk():
    images = _images(2000, 64)
    tracemalloc.start()
    try:
        table = decoded_table(images, IngestConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * images.pixels.nbytes, (
        f"decoded_table peaked at {peak / images.pixels.nbytes:.1f} x the images' bytes"
    )
    flat = images.pixels.reshape(len(images.pixels), -1)
    np.testing.assert_allclose(table["pixel_mean"], flat.mean(axis=1, dtype=np.float64))
    np.testing.assert_allclose(table["pixel_std"], flat.std(axis=1, dtype=np.float64))
