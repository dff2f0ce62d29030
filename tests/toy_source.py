"""A toy source kind, added the way README's "where a change goes" says: this module behind the ``Source`` protocol
(sslflow/data/sources/__init__.py) and one line in ``SOURCE_KINDS`` (the test adds it). ``toy://<count>`` holds
``count`` 12x12 PNG images made in memory from their index, two per case, labelled by parity."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import ImageRecord, safe_name
from sslflow.data.types import SourceImages

SCHEME = "toy://"


def _png(index: int) -> bytes:
    pixels = np.random.default_rng(index).integers(0, 256, (12, 12), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class ToySource:
    """``toy://<count>`` as a Source."""

    kind = "toy"

    def __init__(self, uri: str):
        self.uri, self.count = uri, int(uri.removeprefix(SCHEME))

    @staticmethod
    def claims(uri: str) -> bool:
        return uri.startswith(SCHEME)

    @property
    def name(self) -> str:
        return safe_name(self.uri.removeprefix(SCHEME))

    @property
    def display_name(self) -> str:
        return f"toy-{self.name}"

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]:
        for index in range(self.count):
            data = _png(index)
            record = ImageRecord(
                f"img{index:03d}.png",
                f"{self.uri}/img{index:03d}.png",
                len(data),
                case_id=f"case{index // 2:03d}",
                label=str(index % 2),
            )
            yield index, record, hashlib.sha256(data).hexdigest()

    def packaged_images(self, image_size: int, channels: int) -> SourceImages | None:
        return None

    def without_server(self, fields: dict, digest: str) -> tuple[dict, str]:
        return fields, digest

    @property
    def uri_without_server(self) -> str:
        return self.uri

    def fingerprint(self) -> str:
        return hashlib.sha256(" ".join(digest for _, _, digest in self.records()).encode()).hexdigest()

    def read_bytes(self, record: ImageRecord) -> bytes:
        return _png(int(record.source_path.removeprefix("img").removesuffix(".png")))

    def read_head(self, record: ImageRecord, count: int) -> bytes:
        return self.read_bytes(record)[:count]

    def instance_rows(self) -> InstanceMetadata | None:
        return None

    def unlisted(self) -> Iterator[str]:
        return iter(())

    def check_service(self, timeout_s: float) -> None:
        """Nothing to check: the images are made in memory."""
