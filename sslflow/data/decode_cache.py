"""A local cache of decoded images, so re-ingesting a source with new files decodes only the new ones.

Flyte's cache skips ingest when a source is unchanged; when one file is added the source's fingerprint
changes and ingest runs again. This cache makes that run cheap: decoded pixels are stored under the
sha256 of the file's bytes (plus image size, channels, bits_stored and DECODER_VERSION), so an unchanged file is
read and hashed but not decoded. For S3 a second index maps key + ETag + size to that sha256, so an
unchanged object is not even downloaded.

Where: $SSLFLOW_INGEST_CACHE, else $FLYTE_SDK_LOCAL_SANDBOX/ingest-cache (`make clean-cache` removes
it), else ~/.cache/sslflow/ingest. Entries are written to a temporary file and renamed, so a crash
never leaves a half-written entry; an unreadable entry is treated as missing and rewritten.
Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from sslflow.config import IngestConfig
from sslflow.data.decode import DecodedImage
from sslflow.files import atomic_write

DECODER_VERSION = "2"  # bump when sslflow/data/decode.py changes the pixels it produces


def ingest_cache_dir() -> Path:
    if os.environ.get("SSLFLOW_INGEST_CACHE"):
        return Path(os.environ["SSLFLOW_INGEST_CACHE"])
    if os.environ.get("FLYTE_SDK_LOCAL_SANDBOX"):
        return Path(os.environ["FLYTE_SDK_LOCAL_SANDBOX"]) / "ingest-cache"
    return Path.home() / ".cache" / "sslflow" / "ingest"


class DecodeCache:
    """Decoded images of one (image_size, channels, bits_stored) setting, keyed by the sha256 of the file bytes."""

    def __init__(self, directory: Path, image_size: int, channels: int, bits_stored: int = 0):
        self.directory = directory
        self.setting = f"{image_size}px-{channels}ch-{bits_stored}bits-v{DECODER_VERSION}"

    @classmethod
    def for_config(cls, config: IngestConfig) -> DecodeCache:
        return cls(ingest_cache_dir(), config.image_size, config.channels, config.bits_stored)

    def _entry(self, file_sha256: str) -> Path:
        return self.directory / "decoded" / file_sha256[:2] / f"{file_sha256}-{self.setting}.npz"

    def _version(self, version_key: str) -> Path:
        return self.directory / "versions" / hashlib.sha256(version_key.encode()).hexdigest()

    def get(self, file_sha256: str) -> DecodedImage | None:
        try:
            with np.load(self._entry(file_sha256), allow_pickle=False) as entry:
                return DecodedImage(
                    pixels=entry["pixels"], width=int(entry["width"]), height=int(entry["height"]), mode=str(entry["mode"])
                )
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):  # missing or unreadable: decode again
            return None

    def put(self, file_sha256: str, image: DecodedImage) -> None:
        atomic_write(
            self._entry(file_sha256),
            lambda handle: np.savez(handle, pixels=image.pixels, width=image.width, height=image.height, mode=image.mode),
        )

    def sha256_of_version(self, version_key: str) -> str | None:
        """The file sha256 recorded for ``version_key`` (e.g. an S3 key + ETag + size), if any."""
        try:
            return self._version(version_key).read_text().strip() or None
        except OSError:
            return None

    def remember_version(self, version_key: str, file_sha256: str) -> None:
        atomic_write(self._version(version_key), lambda handle: handle.write(file_sha256.encode()))
