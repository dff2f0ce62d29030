"""What every training task declares: GPU image and request, accelerator, and Elastic (torchrun) config.

Locally Elastic runs one worker process; on a cluster the same task runs nproc_per_node workers per
pod (and nnodes pods as a PyTorchJob when nnodes > 1). SSLFLOW_NPROC_PER_NODE sets the workers per
node at registration time (default 1).
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from flytekit import Resources
from flytekit.extras.accelerators import A100
from flytekitplugins.kfpytorch import Elastic

from images.specs import gpu_image
from ssl_models.encoders import build_encoder
from tasks.artifacts import EncoderCheckpoint

NPROC_PER_NODE = int(os.environ.get("SSLFLOW_NPROC_PER_NODE", "1"))  # one GPU per worker

# monitor_interval: the launcher polls its workers this often (seconds); the default 5 s adds up to
# 5 s to every task, which dominates short local runs.
TRAINING_TASK = dict(
    container_image=gpu_image,
    requests=Resources(cpu="8", mem="32Gi", gpu=str(NPROC_PER_NODE)),
    limits=Resources(gpu=str(NPROC_PER_NODE)),
    accelerator=A100,
    task_config=Elastic(nnodes=1, nproc_per_node=NPROC_PER_NODE, monitor_interval=1),
    retries=2,  # preemptible GPU nodes
)

# Fine-tuning on a few hundred labels gains nothing from data parallelism: one worker, same plumbing.
FINETUNE_TASK = {
    **TRAINING_TASK,
    "requests": Resources(cpu="8", mem="32Gi", gpu="1"),
    "limits": Resources(gpu="1"),
    "task_config": Elastic(nnodes=1, nproc_per_node=1, monitor_interval=1),
}


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def load_encoder(checkpoint: EncoderCheckpoint) -> torch.nn.Module:
    encoder = build_encoder(checkpoint.encoder_name, checkpoint.in_channels, checkpoint.image_size)
    encoder.load_state_dict(torch.load(checkpoint.checkpoint.download(), map_location="cpu", weights_only=True))
    return encoder


def show_progress() -> None:
    """Send ssl_models' per-epoch lines (epoch, loss, images/s) to stderr, in this process and Elastic workers."""
    logger = logging.getLogger("ssl_models")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
