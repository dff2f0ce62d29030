"""One rank of a multi-rank pretraining job on CPU (gloo), started by benchmarks/multirank.py as torchrun starts
its workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

It streams the sharded dataset that multirank.py wrote (every image's id is in its first two pixels), runs
``ssl_models.pretraining.pretrain_contrastive`` with ``--method`` (SimCLR, MoCo v2, BYOL), and writes ``<out>.json``
(the ids this rank read per epoch, its optimiser steps per epoch, images/s), ``<out>.pt`` (its final encoder parameters)
and ``<out>.method.pt`` (the method's final state: MoCo's queue and key network, BYOL's target).

With a ``--checkpoints`` folder (the orchestrator's checkpoint, as Flyte's SyncCheckpoint gives a retry the
previous attempt's), rank 0 saves the state after every epoch and a restarted job resumes from it; with
``--hang-after E`` every rank stops after epoch E's checkpoint and waits to be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_models.augment import AugmentConfig
from ssl_models.data import StreamingPairs
from ssl_models.distributed import init_from_environment, is_distributed
from ssl_models.encoders import build_encoder
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from ssl_models.shards import ShardRows

QUEUE_SIZE = (
    128  # MoCo's queue of negatives: under the images of an epoch (601 in the full run), as PretrainConfig advises
)


def image_ids(images: torch.Tensor) -> list[int]:
    """The ids multirank.write_shards put in each image's first two pixels: (B, C, H, W) uint8 -> B ints."""
    first = images[:, 0, 0, :2].long()
    return (first[:, 0] * 256 + first[:, 1]).tolist()


class RecordingPairs:
    """StreamingPairs that also records the ids of the anchors each epoch's batches hold, and its optimiser steps."""

    def __init__(self, data: StreamingPairs):
        self.data, self.num_images = data, data.num_images
        self.ids: dict[int, list[int]] = {}
        self.steps: dict[int, int] = {}

    def batches(self, epoch, batch_size, rank, world_size, device):
        self.ids[epoch], self.steps[epoch] = [], 0
        for anchors, partners in self.data.batches(epoch, batch_size, rank, world_size, device):
            self.ids[epoch] += image_ids(anchors)
            self.steps[epoch] += len(anchors) >= 2  # pretrain_one_epoch skips a single pair (no negatives)
            yield anchors, partners


def _shards(folder: Path) -> list[ShardRows]:
    listing = json.loads((folder / "shards.json").read_text())
    return [
        ShardRows(folder / f"{sha256}.npy", sha256, np.arange(count), np.arange(start, start + count).astype(str))
        for sha256, start, count in listing
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--init-seed", type=int, default=0)
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--attempt", type=int, default=0)
    parser.add_argument("--hang-after", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank = init_from_environment().rank
    data = RecordingPairs(StreamingPairs(_shards(args.data), seed=0, buffer_shards=2))
    config = PretrainConfig(
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        augment=AugmentConfig(output_size=16),
        method_settings={"queue_size": QUEUE_SIZE} if args.method == "moco" else {},
    )
    torch.manual_seed(args.init_seed + rank)  # only rank 0's initial weights count: DDP broadcasts them
    encoder = build_encoder("small_cnn", 1)
    checkpoints, resume_state = _checkpoints(args, rank)
    final_method_state = {}
    history = pretrain_contrastive(
        encoder,
        data,
        config,
        on_epoch_end=_end_of_epoch(args, rank, checkpoints, final_method_state),
        resume_state=resume_state,
    )
    record = {
        "rank": rank,
        "ids": data.ids,
        "steps": data.steps,
        "epochs": [h["epoch"] for h in history],
        "images_per_second": [h["images_per_second"] for h in history],
        "resumed": resume_state is not None,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record))
    torch.save({name: tensor.detach() for name, tensor in encoder.state_dict().items()}, args.out.with_suffix(".pt"))
    torch.save(final_method_state, args.out.with_suffix(".method.pt"))
    if is_distributed():
        torch.distributed.barrier()  # every rank has written its results
    os._exit(0)  # gloo's teardown can abort (SIGABRT) a rank whose peer exited first; the results are on disk


def _checkpoints(args: argparse.Namespace, rank: int):
    """(EpochCheckpoints or None, the state rank 0 found or None): only rank 0 reads and writes the checkpoint."""
    if args.checkpoints is None:
        return None, None
    from flytekit.core.checkpointer import SyncCheckpoint

    from sslflow.training.checkpoints import EpochCheckpoints

    source = str(args.checkpoints / f"attempt-{args.attempt - 1}") if args.attempt > 0 else None
    checkpoints = EpochCheckpoints(
        "multirank", remote=SyncCheckpoint(str(args.checkpoints / f"attempt-{args.attempt}"), source)
    )
    return checkpoints, checkpoints.load() if rank == 0 else None


def _end_of_epoch(args: argparse.Namespace, rank: int, checkpoints, final_method_state: dict):
    """The epoch callback: rank 0 checkpoints; every rank keeps its method state of the last epoch in
    ``final_method_state``."""

    def end_of_epoch(epoch: int, metrics: dict, state_fn) -> None:
        if epoch == args.epochs - 1:
            final_method_state.update({name: tensor.detach().clone() for name, tensor in state_fn()["model"].items()})
        if checkpoints is not None and rank == 0:
            checkpoints.save(state_fn())
            (args.checkpoints / f"saved-{args.attempt}-{epoch}").touch()
        if epoch == args.hang_after:
            time.sleep(600)  # where SIGKILL finds the job: after this epoch's checkpoint

    return end_of_epoch


if __name__ == "__main__":
    main()
