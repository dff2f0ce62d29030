"""One image file's bytes -> (channels, size, size) uint8 pixels: the only place images are decoded.

Formats: PNG, JPEG, TIFF, BMP; anything else is refused, even where Pillow could read it.
Modes, normalised to ``channels`` (1: L, 3: RGB) by Pillow's conversions:
- 1, L, P, LA, RGB, RGBA, CMYK (and other 8-bit modes): palettes expanded, alpha dropped
  (not composited), CMYK converted naively, colour to grey by ITU-R 601-2 luma.
- I;16, I;16B, I;16L, I;16N (16-bit) and I (32-bit integer, which Pillow uses for some 16-bit
  files): scaled by 255 / full scale, never clipped. With ``bits_stored`` N (8 to 16) the full scale
  is 2**N - 1 (N=16: 65535 -> 255, 32768 -> 128, 1000 -> 4; N=12: 4095 -> 255) and an image with a
  value above it is refused. With ``bits_stored`` 0 it is inferred PER IMAGE: 2**b - 1 for the
  smallest b of INFERRED_DEPTHS that holds the image's maximum (a 12-bit scan stored in 16 bits,
  maximum 4000, gets 4095; but a dark 16-bit image with maximum 3000 gets 4095 too, and comes out
  brighter than with N=16). Negative values, and values above 65535, are refused.
- F (32-bit float): min-max normalised per image; an image with NaN or infinite pixels is refused.
EXIF orientation is applied, then the image is resized to size x size (bilinear with Pillow's
antialiasing; the aspect ratio is not kept). High-bit-depth images are resized before rounding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sslflow.data.types import UndecodableImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
INFERRED_DEPTHS = (8, 10, 12, 14, 16)  # bits_stored=0: the depths an integer image's maximum is matched to


@dataclass(frozen=True)
class DecodedImage:
    """pixels: (channels, size, size) uint8; width, height, mode: of the file as stored."""

    pixels: np.ndarray
    width: int
    height: int
    mode: str


def check_pixel_count(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse an image whose pixel count could exhaust memory when decoded."""
    if width * height > max_pixels:
        raise UndecodableImageError(
            f"{name}: decompression bomb: {width}x{height} = {width * height} pixels exceeds "
            f"max_image_pixels={max_pixels} (raise IngestConfig.max_image_pixels if the image is genuine)"
        )


def full_scale(maximum: int, bits_stored: int, name: str) -> int:
    """The value of an integer image that becomes 255: 2**bits_stored - 1, or inferred from ``maximum``
    when bits_stored is 0 (module docstring). UndecodableImageError when ``maximum`` does not fit."""
    if bits_stored:
        top = 2**bits_stored - 1
        if maximum > top:
            raise UndecodableImageError(
                f"{name}: maximum pixel value {maximum} is above {top} = 2**{bits_stored} - 1, the largest value "
                f"IngestConfig.bits_stored={bits_stored} allows; set bits_stored to the data's real depth (e.g. 16), "
                "or 0 to infer it per image"
            )
        return top
    for bits in INFERRED_DEPTHS:
        if maximum <= 2**bits - 1:
            return 2**bits - 1
    raise UndecodableImageError(
        f"{name}: maximum pixel value {maximum} is above 65535; images of more than 16 bits are not supported"
    )


def _integer_to_float(values: np.ndarray, mode: str, name: str, bits_stored: int) -> np.ndarray:
    """A 16-bit or 32-bit integer image's values scaled to [0, 255] by its full scale."""
    if values.min() < 0:
        raise UndecodableImageError(
            f"{name}: negative pixel values (minimum {int(values.min())}) in a mode {mode} image; "
            "signed data (e.g. CT in Hounsfield units) must be stored as unsigned values"
        )
    return values * (255.0 / full_scale(int(values.max()), bits_stored, name))


def _float_to_float(values: np.ndarray, name: str) -> np.ndarray:
    """A float image's values min-max scaled to [0, 255]; UndecodableImageError for NaN or infinite pixels."""
    not_finite = int(np.count_nonzero(~np.isfinite(values)))
    if not_finite:
        raise UndecodableImageError(
            f"{name}: {not_finite} of {values.size} pixels of this 32-bit float image are not finite (NaN or "
            "infinity); fix or remove the file"
        )
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)


def _high_depth_to_float(image: Image.Image, name: str, bits_stored: int) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as mode F with values in [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = _float_to_float(values, name)
    else:
        scaled = _integer_to_float(values, image.mode, name, bits_stored)
    return Image.fromarray(scaled.astype(np.float32), mode="F")


def decode_image(
    data: bytes, name: str, image_size: int, channels: int, max_pixels: int, *, bits_stored: int = 0
) -> DecodedImage:
    """Decode one image file's bytes; ``name`` (path or URL) is used in error messages.

    bits_stored: the depth of 16-bit and 32-bit integer images (0: inferred per image; module docstring).
    Raises UndecodableImageError for zero bytes, a format other than ALLOWED_FORMATS, truncated or
    corrupt data, more than ``max_pixels`` pixels (checked from the header, before decoding), integer
    values outside the bit depth, and float images with NaN or infinite pixels.
    """
    if not data:
        raise UndecodableImageError(f"{name}: zero-byte file")
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard, used while reading the header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                width, height, mode = image.width, image.height, image.mode
                check_pixel_count(width, height, max_pixels, name)
                image.load()
                image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UndecodableImageError(f"{name}: decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise UndecodableImageError(
            f"{name}: not a {', '.join(ALLOWED_FORMATS)} image (no header of those formats: another kind of file, or "
            "cut short)"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, UndecodableImageError):
            raise
        raise UndecodableImageError(
            f"{name}: not a decodable image, truncated or corrupt ({type(error).__name__}: {error})"
        ) from error

    try:
        pixels = _to_pixels(image, image_size, channels, name, bits_stored)
    except UndecodableImageError:
        raise
    except ValueError as error:  # a mode Pillow cannot convert to L / RGB (LAB, HSV, ...)
        raise UndecodableImageError(
            f"{name}: mode {mode} cannot be converted to {channels} channel(s) ({error})"
        ) from error
    return DecodedImage(pixels=pixels, width=width, height=height, mode=mode)


def _to_pixels(image: Image.Image, image_size: int, channels: int, name: str, bits_stored: int) -> np.ndarray:
    """A loaded image -> (channels, image_size, image_size) uint8, following the module docstring."""
    size = (image_size, image_size)
    if image.mode in (*SIXTEEN_BIT_MODES, "F"):
        resized = np.asarray(_high_depth_to_float(image, name, bits_stored).resize(size, Image.Resampling.BILINEAR))
        grey = np.clip(np.round(resized), 0, 255).astype(np.uint8)
        pixels = grey[None] if channels == 1 else np.repeat(grey[None], 3, axis=0)
    else:
        if image.mode == "P":
            image = image.convert("RGBA")  # palettes with transparency convert cleanly only through RGBA
        converted = image.convert("L" if channels == 1 else "RGB").resize(size, Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
        pixels = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels)
