"""One image file's bytes -> (channels, size, size) uint8 pixels: the only place images are decoded.

Formats: PNG, JPEG, TIFF, BMP; anything else is refused, even where Pillow could read it.
Modes, normalised to ``channels`` (1: L, 3: RGB) by Pillow's conversions:
- 1, L, P, LA, RGB, RGBA, CMYK (and other 8-bit modes): palettes expanded, alpha dropped
  (not composited), CMYK converted naively, colour to grey by ITU-R 601-2 luma.
- I;16, I;16B, I;16L, I;16N (16-bit) and I (32-bit integer, which Pillow uses for some 16-bit
  files): full scale is 65535, so 65535 -> 255, 32768 -> 128, 1000 -> 4; never clipped at 255.
- F (32-bit float): min-max normalised per image.
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


def _high_depth_to_float(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as mode F with values in [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    else:
        scaled = np.clip(values, 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(scaled.astype(np.float32), mode="F")


def decode_image(data: bytes, name: str, image_size: int, channels: int, max_pixels: int) -> DecodedImage:
    """Decode one image file's bytes; ``name`` (path or URL) is used in error messages.

    Raises UndecodableImageError for zero bytes, a format other than ALLOWED_FORMATS, truncated or
    corrupt data, and more than ``max_pixels`` pixels (checked from the header, before decoding).
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
            f"{name}: not a {', '.join(ALLOWED_FORMATS)} image (no header of those formats: another kind of file, or cut short)"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, UndecodableImageError):
            raise
        raise UndecodableImageError(f"{name}: not a decodable image, truncated or corrupt ({type(error).__name__}: {error})") from error

    try:
        pixels = _to_pixels(image, image_size, channels)
    except ValueError as error:  # a mode Pillow cannot convert to L / RGB (LAB, HSV, ...)
        raise UndecodableImageError(f"{name}: mode {mode} cannot be converted to {channels} channel(s) ({error})") from error
    return DecodedImage(pixels=pixels, width=width, height=height, mode=mode)


def _to_pixels(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """A loaded image -> (channels, image_size, image_size) uint8, following the module docstring."""
    size = (image_size, image_size)
    if image.mode in (*SIXTEEN_BIT_MODES, "F"):
        resized = np.asarray(_high_depth_to_float(image).resize(size, Image.Resampling.BILINEAR))
        grey = np.clip(np.round(resized), 0, 255).astype(np.uint8)
        pixels = grey[None] if channels == 1 else np.repeat(grey[None], 3, axis=0)
    else:
        if image.mode == "P":
            image = image.convert("RGBA")  # palettes with transparency convert cleanly only through RGBA
        converted = image.convert("L" if channels == 1 else "RGB").resize(size, Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
        pixels = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels)
