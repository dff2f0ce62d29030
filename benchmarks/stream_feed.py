"""The per-core rates of the README's 10^6-image plan at 224 px: ingest's decode to 224 px, and how fast one
rank's streaming path delivers pairs with no model (the data-path bound on a streaming epoch).

Decode: DECODE_FILES 256-px PNGs like benchmarks/data_scale.py's (half gray, half RGB), decoded one at a
time on one core with sslflow's ``decode_image`` to 224 px, gray and RGB (ms per image).

For each image shape (224-px gray and RGB, the 10^6-image plan of the README, and the default 28 px),
writes ``--shards`` shards of ``--shard-megabytes`` MiB of random uint8 images with
``sslflow.data.dataset.write_case_shards`` (as ingest does), then times ``--epochs`` epochs of
``ssl_models.data.StreamingPairs.batches`` on rank 0 of 1 at batch size 256, on the CPU: every shard read
from disk (page cache), checked against its sha256, shuffled in a buffer of BUFFER_SHARDS shards by the
background thread, and gathered into (anchor, partner) uint8 batches. What it leaves out: the copy to a GPU
and the augmentation, both on the device. An epoch streamed by R ranks cannot take less than
N / (R x images_per_second) on this CPU's cores (one loading thread per rank).

    python benchmarks/stream_feed.py            # about 2 minutes on 2 cores
    python benchmarks/stream_feed.py --quick    # small shards, seconds

Prints one JSON line and writes benchmarks/results/stream_feed-<device>-<date>.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result
from ssl_models.data import StreamingPairs
from ssl_models.shards import ShardRows
from sslflow.data.dataset import shard_path, write_case_shards

SHAPES = {"gray-224": (1, 224, 224), "rgb-224": (3, 224, 224), "gray-28": (1, 28, 28)}
BUFFER_SHARDS = 4
BATCH_SIZE = 256
DECODE_FILES = 1000


def feed_rate(folder: Path, shape: tuple[int, ...], shards: int, shard_megabytes: int, epochs: int) -> dict:
    """Write ``shards`` shards of ``shape`` images, then time ``epochs`` streaming epochs over them."""
    per_shard = max(1, shard_megabytes * 2**20 // int(np.prod(shape)))
    count = shards * per_shard
    pixels = np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)
    case_ids = [str(index) for index in range(count)]  # SimCLR: each image its own case
    shard_of_row, row_in_shard = write_case_shards(
        folder, pixels, case_ids, np.zeros(count, dtype=bool), shard_megabytes * 2**20
    )
    del pixels
    rows = {}
    for index, (shard, row) in enumerate(zip(shard_of_row, row_in_shard)):
        rows.setdefault(shard, []).append((row, case_ids[index]))
    sources = [
        ShardRows(
            shard_path(folder.parent, shard),
            shard,
            np.array([r for r, _ in members]),
            np.array([c for _, c in members]),
        )
        for shard, members in sorted(rows.items())
    ]
    data = StreamingPairs(sources, buffer_shards=BUFFER_SHARDS)
    started = time.perf_counter()
    delivered = 0
    for epoch in range(epochs):
        for anchors, _partners in data.batches(epoch, BATCH_SIZE, rank=0, world_size=1, device=torch.device("cpu")):
            delivered += len(anchors)
    seconds = time.perf_counter() - started
    return {
        "image_shape": list(shape),
        "images": count,
        "shards": len(sources),
        "shard_megabytes": shard_megabytes,
        "epochs": epochs,
        "seconds": round(seconds, 2),
        "images_per_second": round(delivered / seconds, 1),
        "megabytes_per_second": round(delivered * int(np.prod(shape)) / seconds / 2**20, 1),
    }


def decode_ms_per_image(files: int) -> dict:
    """ms per image on one core to decode ``files`` 256-px PNGs to 224 px, gray (1 channel) and RGB (3)."""
    import io

    from benchmarks.data_scale import synthetic_image
    from sslflow.data.decode import decode_image

    blobs = []
    for index in range(files):
        buffer = io.BytesIO()
        synthetic_image(index).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    result = {}
    for name, channels in (("gray-224", 1), ("rgb-224", 3)):
        started = time.perf_counter()
        for blob in blobs:
            decode_image(blob, "benchmark.png", 224, channels, 2**28)
        result[name] = round((time.perf_counter() - started) / files * 1e3, 3)
    return result


def main() -> None:
    arguments = parse_arguments(__doc__)
    shards, shard_megabytes, epochs = (3, 8, 1) if arguments.quick else (8, 128, 2)
    results = {}
    for name, shape in SHAPES.items():
        with tempfile.TemporaryDirectory(prefix="stream-feed-") as work:
            results[name] = feed_rate(Path(work) / "shards", shape, shards, shard_megabytes, epochs)
    decode_files = 50 if arguments.quick else DECODE_FILES
    payload = {
        "buffer_shards": BUFFER_SHARDS,
        "batch_size": BATCH_SIZE,
        "threads": torch.get_num_threads(),
        "results": results,
        "decode_files": decode_files,
        "decode_256px_png_ms_per_image_one_core": decode_ms_per_image(decode_files),
    }
    print(json.dumps(payload))
    write_result("stream_feed" + ("-quick" if arguments.quick else ""), payload, arguments.out)


if __name__ == "__main__":
    main()
