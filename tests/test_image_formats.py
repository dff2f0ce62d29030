"""PNG, JPEG, TIFF, BMP in every supported mode decode to the configured channels and size with the right values."""

import io

import numpy as np
import pytest
from PIL import Image

from sslflow.data.decode import decode_image
from sslflow.data.types import UndecodableImageError

RGB = (200, 100, 50)
GREY_OF_RGB = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601-2 luma: 124


def _encode(image: Image.Image, format_name: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_name)
    return buffer.getvalue()


def _constant(mode: str) -> Image.Image:
    """A 30x20 image of one colour in ``mode``, whose grey value is GREY_OF_RGB (CMYK: see the test)."""
    if mode == "L":
        return Image.new("L", (30, 20), GREY_OF_RGB)
    if mode == "LA":
        return Image.new("LA", (30, 20), (GREY_OF_RGB, 0))  # fully transparent: alpha is dropped, not composited
    if mode == "RGBA":
        return Image.new("RGBA", (30, 20), (*RGB, 128))
    if mode == "P":
        return Image.new("RGB", (30, 20), RGB).convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "CMYK":
        return Image.new("RGB", (30, 20), RGB).convert("CMYK")
    return Image.new("RGB", (30, 20), RGB)


@pytest.mark.parametrize(
    "mode, format_name",
    [
        ("L", "PNG"),
        ("L", "BMP"),
        ("LA", "PNG"),
        ("RGB", "JPEG"),
        ("RGB", "BMP"),
        ("RGB", "TIFF"),
        ("RGBA", "PNG"),
        ("RGBA", "TIFF"),
        ("P", "PNG"),
        ("P", "BMP"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_becomes_the_configured_channels_and_size(mode, format_name, channels):
    data = _encode(_constant(mode), format_name)
    decoded = decode_image(data, f"x.{format_name.lower()}", image_size=12, channels=channels, max_pixels=10**6)
    assert decoded.pixels.shape == (channels, 12, 12) and decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height) == (30, 20)
    tolerance = 4 if format_name == "JPEG" else 1  # lossy
    if channels == 1:
        assert abs(int(decoded.pixels.mean()) - GREY_OF_RGB) <= tolerance, decoded.pixels.mean()
    elif mode not in ("L", "LA"):
        assert np.allclose(decoded.pixels.reshape(3, -1).mean(axis=1), RGB, atol=tolerance)


@pytest.mark.parametrize("format_name", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_images_are_scaled_not_clipped(format_name, channels):
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(np.kron(values, np.ones((8, 8), dtype=np.uint16)))  # 16x16, four constant blocks
    assert image.mode == "I;16"
    decoded = decode_image(_encode(image, format_name), "x", image_size=16, channels=channels, max_pixels=10**6)
    assert decoded.mode == "I;16" and decoded.pixels.shape == (channels, 16, 16)
    corners = decoded.pixels[:, ::8, ::8]  # one pixel of each block, per channel
    expected = np.round(values / 65535 * 255).astype(np.uint8)  # [[0, 4], [128, 255]]
    assert (corners == expected).all(), corners
    assert decoded.pixels[0, 0, 8] == 4  # 1000/65535 of full scale: clipping to 8 bits would have given 255


def test_32_bit_integer_tiff_uses_the_16_bit_scale():
    image = Image.fromarray(np.full((10, 10), 65535 // 2, dtype=np.int32), mode="I")
    decoded = decode_image(_encode(image, "TIFF"), "x.tif", image_size=10, channels=1, max_pixels=10**6)
    assert decoded.mode == "I" and decoded.pixels.max() == decoded.pixels.min() == 127


@pytest.mark.parametrize("height, width", [(40, 60), (300, 20), (7, 9)])
def test_any_size_is_resized_to_the_square_without_losing_its_layout(height, width):
    halves = np.zeros((height, width), dtype=np.uint8)
    halves[:, width // 2 :] = 255  # dark left half, bright right half
    decoded = decode_image(_encode(Image.fromarray(halves), "PNG"), "x.png", image_size=6, channels=1, max_pixels=10**6)
    assert decoded.pixels.shape == (1, 6, 6) and (decoded.width, decoded.height) == (width, height)
    assert decoded.pixels[0, :, 0].max() < 30 and decoded.pixels[0, :, -1].min() > 225


def test_formats_other_than_png_jpeg_tiff_bmp_are_refused():
    data = _encode(Image.new("RGB", (8, 8)), "GIF")
    with pytest.raises(UndecodableImageError, match=r"scan.png: not a PNG, JPEG, TIFF, BMP image"):
        decode_image(data, "scan.png", image_size=8, channels=1, max_pixels=10**6)
