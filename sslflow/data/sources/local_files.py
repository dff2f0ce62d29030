"""What every source of local files shares (a folder, a parquet list): its images are files on this machine, read
by path, named by no server, behind no service."""

from __future__ import annotations

from pathlib import Path

from sslflow.data.metadata import ImageRecord
from sslflow.data.types import SourceImages


class LocalFiles:
    """The part of the Source protocol (sslflow/data/sources/__init__.py) that is the same for every source of local
    files; a subclass lists them (records, fingerprint, instance_rows, unlisted)."""

    uri: str

    def packaged_images(self, image_size: int, channels: int) -> SourceImages | None:
        """None: its images are files, listed by ``records``."""
        return None

    def without_server(self, fields: dict, digest: str) -> tuple[dict, str]:
        """The record as it is: local files name no server."""
        return fields, digest

    @property
    def uri_without_server(self) -> str:
        return self.uri

    def read_bytes(self, record: ImageRecord) -> bytes:
        return Path(record.location).read_bytes()

    def read_head(self, record: ImageRecord, count: int) -> bytes:
        with open(record.location, "rb") as file:
            return file.read(count)

    def check_service(self, timeout_s: float) -> None:
        """Nothing to check: the files are local."""
