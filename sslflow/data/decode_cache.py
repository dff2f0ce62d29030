"""A local cache of decoded images, so re-ingesting a source with new files decodes only the new ones.

Flyte's cache skips ingest when a source is unchanged; when one file is added the source's fingerprint
changes and ingest runs again. This cache makes that run cheap: decoded pixels are stored under the
sha256 of the file's bytes (plus image size, channels, bits_stored and DECODER_VERSION), so an unchanged file is
read and hashed but not decoded. For S3 a second index maps key + ETag + size to that sha256, so an
unchanged object is not even downloaded.

Where: $SSLFLOW_INGEST_CACHE, else $FLYTE_SDK_LOCAL_SANDBOX/ingest-cache (`make clean-cache` removes it), else
~/.cache/sslflow/ingest. SSLFLOW_INGEST_CACHE=off turns it off, and the task images set that: a pod's disk is gone when
the pod ends, so on a cluster the cache would only cost a file write per image; there an unchanged chunk is a hit in
Flyte's cache instead (sslflow/data/chunks.py). Entries are written to a temporary file and renamed, so a crash never
leaves a half-written entry; an unreadable entry is treated as missing and rewritten. Deleting the folder is always
safe."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from sslflow.config import IngestConfig
from sslflow.data.decode import DecodedImage
from sslflow.data.dicom import DicomImage
from sslflow.files import atomic_write

DECODER_VERSION = "2"  # bump when sslflow/data/decode.py changes the pixels it produces
DICOM_DECODER_VERSION = "2"  # bump when sslflow/data/dicom.py changes what it produces
INGEST_CACHE_OFF = "off"  # SSLFLOW_INGEST_CACHE=off: no decode cache, no file-digest cache (the task images set it)


def ingest_cache_dir() -> Path | None:
    """The folder of the decode cache and the file-digest cache; None when SSLFLOW_INGEST_CACHE is "off"."""
    if os.environ.get("SSLFLOW_INGEST_CACHE") == INGEST_CACHE_OFF:
        return None
    if os.environ.get("SSLFLOW_INGEST_CACHE"):
        return Path(os.environ["SSLFLOW_INGEST_CACHE"])
    if os.environ.get("FLYTE_SDK_LOCAL_SANDBOX"):
        return Path(os.environ["FLYTE_SDK_LOCAL_SANDBOX"]) / "ingest-cache"
    return Path.home() / ".cache" / "sslflow" / "ingest"


class DecodeCache:
    """Decoded images of one (image_size, channels, bits_stored) setting, keyed by the sha256 of the file bytes.

    directory None: the cache is off (every get misses, every put is skipped).
    """

    def __init__(
        self, directory: Path | None, image_size: int, channels: int, bits_stored: int = 0, dicom_options: str = ""
    ):
        self.directory = directory
        self.setting = f"{image_size}px-{channels}ch-{bits_stored}bits-v{DECODER_VERSION}"
        self.dicom_setting = hashlib.sha256(
            f"{image_size} {channels} {dicom_options} v{DICOM_DECODER_VERSION}".encode()
        ).hexdigest()[:16]

    @classmethod
    def for_config(cls, config: IngestConfig) -> DecodeCache:
        options = " ".join(
            [
                config.dicom_window,
                config.dicom_frames,
                config.dicom_case_level,
                config.dicom_site,
                f"names={config.dicom_site_names}",
                f"burned_in={config.dicom_burned_in}",
            ]
        )  # an opted-in image never serves a default run
        return cls(ingest_cache_dir(), config.image_size, config.channels, config.bits_stored, options)

    def _entry(self, file_sha256: str) -> Path:
        return self.directory / "decoded" / file_sha256[:2] / f"{file_sha256}-{self.setting}.npz"

    def _version(self, version_key: str) -> Path:
        return self.directory / "versions" / hashlib.sha256(version_key.encode()).hexdigest()

    def get(self, file_sha256: str) -> DecodedImage | None:
        if self.directory is None:
            return None
        try:
            with np.load(self._entry(file_sha256), allow_pickle=False) as entry:
                return DecodedImage(
                    pixels=entry["pixels"],
                    width=int(entry["width"]),
                    height=int(entry["height"]),
                    mode=str(entry["mode"]),
                )
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):  # missing or unreadable: decode again
            return None

    def put(self, file_sha256: str, image: DecodedImage) -> None:
        if self.directory is None:
            return
        atomic_write(
            self._entry(file_sha256),
            lambda handle: np.savez(
                handle, pixels=image.pixels, width=image.width, height=image.height, mode=image.mode
            ),
        )

    def _dicom_entry(self, file_sha256: str, key_id: str) -> Path:
        return self.directory / "decoded" / file_sha256[:2] / f"{file_sha256}-dicom-{self.dicom_setting}-{key_id}.npz"

    def get_dicom(self, file_sha256: str, key_id: str) -> DicomImage | None:
        """A decoded DICOM file; entries hold only pseudonyms, under the id of the key that made them."""
        if self.directory is None:
            return None
        try:
            with np.load(self._dicom_entry(file_sha256, key_id), allow_pickle=False) as entry:
                fields = {name: str(entry[name]) for name in ("mode", "modality", "site", "instance", "case_level")}
                case_id, lossless = str(entry["case_id"]) or None, bool(entry["lossless"])
                return DicomImage(
                    pixels=entry["pixels"],
                    width=int(entry["width"]),
                    height=int(entry["height"]),
                    case_id=case_id,
                    lossless=lossless,
                    **fields,
                )
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
            return None

    def put_dicom(self, file_sha256: str, key_id: str, image: DicomImage) -> None:
        if self.directory is None:
            return
        values = {
            name: getattr(image, name)
            for name in ("pixels", "width", "height", "mode", "modality", "site", "instance", "case_level", "lossless")
        }
        atomic_write(
            self._dicom_entry(file_sha256, key_id),
            lambda handle: np.savez(handle, case_id=image.case_id or "", **values),
        )

    def sha256_of_version(self, version_key: str) -> str | None:
        """The file sha256 recorded for ``version_key`` (e.g. an S3 key + ETag + size), if any."""
        if self.directory is None:
            return None
        try:
            return self._version(version_key).read_text().strip() or None
        except OSError:
            return None

    def remember_version(self, version_key: str, file_sha256: str) -> None:
        if self.directory is None:
            return
        atomic_write(self._version(version_key), lambda handle: handle.write(file_sha256.encode()))
