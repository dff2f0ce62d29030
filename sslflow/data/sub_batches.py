"""A chunk's files decoded in sub-batches of bounded images, so that a chunk task's memory is bounded by the images
it holds decoded, not by how many frames its files turn out to hold.

The plan cuts chunks by listed files and bytes and reads the frame count only of large files
(sslflow/data/chunks.py), so a chunk of small compressed multi-frame objects (cine, ultrasound) can decode into many
times the images it was cut for. ``SubBatches`` decodes the files in order until the images decoded reach
``batch_images``, then hands over those decoded so far except the images of the last case (possibly unfinished:
kept back for the next sub-batch), whose shards its caller writes before more files are decoded. So at most about
batch_images + the frames of one file are held decoded at once, a case larger than that being held whole (its
images stay in one shard, as sslflow/data/dataset.py's write_case_shards promises).

A DICOM image's case comes from its header, known only once decoded (a metadata row keyed by its SOPInstanceUID that
names another case is applied by the join: the shards are cut by the header's): the images of a case whose files are
not next to each other in the chunk may land in two sub-batches (and two shards), as they may in two chunks. An
image without a case is a case of its own. A chunk whose images fit in one sub-batch is decoded in one piece, as
ListingReader.read reads a listing.
"""

from __future__ import annotations

from collections.abc import Iterator

from sslflow.data.listing import ImageRow, ListingReader, image_count
from sslflow.data.metadata import ImageRecord
from sslflow.data.types import SourceImages


def last_case_start(rows: list[ImageRow]) -> int:
    """Where the trailing run of rows of the last row's case starts in ``rows`` (len(rows) when that row has no case:
    an image without a case is a case of its own)."""
    last = rows[-1].case_id
    start = len(rows)
    while last and start > 0 and rows[start - 1].case_id == last:
        start -= 1
    return start


class SubBatches:
    """Iterating gives the images of ``records`` (in order) as SourceImages sub-batches (pixels (n, C, H, W); their
    fields about files left empty), decoded by ``reader`` (sslflow/data/listing.py) at most about ``batch_images`` at
    a time (module docstring). Afterwards ``files()`` gives the fields about the files of the whole chunk (quarantine
    and max_bad_fraction over all of them), ``decoded_at_most`` the most images held decoded at once and ``count``
    the sub-batches. A chunk without any image is one empty sub-batch.

    Once a single case holds batch_images images, it is held whole and checked for its end after every further
    batch_images images decoded (not after every file), so the sub-batch that ends it holds up to batch_images
    more."""

    def __init__(self, records: list[ImageRecord], reader: ListingReader, batch_images: int):
        if batch_images < 1:
            raise ValueError(f"batch_images must be positive, got {batch_images}")
        self.records, self.reader, self.batch_images = records, reader, batch_images
        self.decoded_at_most, self.count = 0, 0

    def __iter__(self) -> Iterator[SourceImages]:
        held: list[ImageRow] = []  # rows kept back: the last case's
        pending: list[tuple] = []  # decoded files not yet made rows (ListingReader.decode's results)
        pending_images, due = 0, self.batch_images  # hand over once held + pending images reach ``due``
        for record in self.records:
            if len(held) + pending_images >= due:
                held = self._rows(held, pending, pending_images)
                pending, pending_images = [], 0
                cut = last_case_start(held)
                due = self.batch_images if cut else len(held) + self.batch_images
                if cut:
                    yield self._batch(held[:cut])
                    held = held[cut:]  # the rows handed over are let go (no other name holds them)
            decoded = self.reader.decode(record)
            if decoded is not None:
                pending.append(decoded)
                pending_images += image_count(decoded[2])
        rows = self._rows(held, pending, pending_images)
        if rows or not self.count:
            yield self._batch(rows)

    def _rows(self, held: list[ImageRow], pending: list[tuple], pending_images: int) -> list[ImageRow]:
        """The rows kept back, then those of the files decoded since."""
        self.decoded_at_most = max(self.decoded_at_most, len(held) + pending_images)
        return held + self.reader.rows(pending)

    def _batch(self, rows: list[ImageRow]) -> SourceImages:
        self.count += 1
        return self.reader.source_images(rows)

    def files(self) -> dict:
        """ListingReader.files over the whole chunk, once iterated."""
        return self.reader.files()


class OneBatch:
    """Images already decoded (a packaged source's index range, SourceImages) as a single sub-batch, with SubBatches'
    interface: iterating gives them, ``files()`` their fields about files."""

    def __init__(self, images: SourceImages):
        self.images, self.decoded_at_most, self.count = images, len(images.pixels), 1

    def __iter__(self) -> Iterator[SourceImages]:
        yield self.images

    def files(self) -> dict:
        names = ("quarantined", "read_stats", "skipped", "held_back")
        return {name: getattr(self.images, name) for name in names}
