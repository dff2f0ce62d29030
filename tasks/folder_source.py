"""A folder of images with an optional ``metadata.csv`` (path, case_id, site, label; extra columns ignored).

Without metadata every image file under the folder is read and is its own case. Images of any size
and mode are converted to (channels, image_size, image_size) uint8; 16-bit images are scaled, not clipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from tasks.sources import IMAGE_SUFFIXES, SourceError, SourceImages

METADATA_FILE = "metadata.csv"
MAX_IMAGE_PIXELS = 100_000_000  # a decompression bomb guard: 10k x 10k


def _read_metadata(root: Path) -> pd.DataFrame:
    path = root / METADATA_FILE
    try:
        metadata = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SourceError(f"{path}: not parseable as CSV ({error})") from error
    if "path" not in metadata.columns:
        raise SourceError(f"{path}: missing required column 'path' (columns found: {list(metadata.columns)})")
    for column in ("case_id", "site", "label"):
        if column not in metadata.columns:
            metadata[column] = ""
    return metadata


def _resolve_inside(root: Path, relative: str, row: int) -> Path:
    where = f"{root / METADATA_FILE} row {row + 2}, column 'path'"
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise SourceError(f"{where}: {relative!r} must be a relative path inside the source folder")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SourceError(f"{where}: {relative!r} resolves outside the source folder (symlink?)")
    if not path.is_file():
        raise SourceError(f"{where}: {relative!r} does not exist")
    return path


def decode_image(path: Path, image_size: int, channels: int) -> tuple[np.ndarray, int, int, str]:
    """One image file -> ((channels, size, size) uint8, width, height, original mode)."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as image:
            image.load()
            width, height, mode = image.width, image.height, image.mode
            if width * height > MAX_IMAGE_PIXELS:
                raise SourceError(f"{path}: {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS}")
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                values = np.asarray(image, dtype=np.float64)
                full_scale = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
                image = Image.fromarray(np.clip(values / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
            converted = image.convert("L" if channels == 1 else "RGB")
            resized = converted.resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        if isinstance(error, SourceError):
            raise
        raise SourceError(f"{path}: not a decodable image ({type(error).__name__}: {error})") from error
    pixels = np.asarray(resized, dtype=np.uint8)
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels), width, height, mode


def read_folder(root: Path, image_size: int, channels: int) -> SourceImages:
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist")
    if (root / METADATA_FILE).is_file():
        metadata = _read_metadata(root)
        paths = [_resolve_inside(root, relative, row) for row, relative in enumerate(metadata["path"])]
        case_ids = [case or None for case in metadata["case_id"]]
        has_cases = any(case is not None for case in case_ids)
        sites = [site or "default" for site in metadata["site"]]
        labels = [label or None for label in metadata["label"]]
    else:
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        has_cases, case_ids = False, [None] * len(paths)
        sites, labels = ["default"] * len(paths), [None] * len(paths)
    if not paths:
        raise SourceError(f"source folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    pixels, widths, heights, modes, sizes = [], [], [], [], []
    for path in paths:
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: zero-byte file")
        image, width, height, mode = decode_image(path, image_size, channels)
        pixels.append(image)
        widths.append(width)
        heights.append(height)
        modes.append(mode)
        sizes.append(path.stat().st_size)
    relative_paths = [str(path.relative_to(root.resolve()) if path.is_absolute() else path) for path in (p.resolve() for p in paths)]
    return SourceImages(
        pixels=np.stack(pixels),
        source_paths=relative_paths,
        labels=labels,
        case_ids=[case if case is not None else f"image-{hashlib.sha256(p.encode()).hexdigest()[:12]}" for case, p in zip(case_ids, relative_paths)]
        if has_cases
        else None,
        sites=sites,
        size_bytes=sizes,
        modes=modes,
        widths=widths,
        heights=heights,
    )
