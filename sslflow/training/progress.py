"""Progress lines of training tasks, and which process of a torchrun job speaks for it."""

from __future__ import annotations

import logging
import os
import sys


def is_main_process() -> bool:
    """Rank 0 of a torchrun (Elastic) job, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def show_progress() -> None:
    """Send ssl_models' per-epoch lines (epoch, loss, images/s) to stderr, in this process and Elastic workers."""
    logger = logging.getLogger("ssl_models")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
