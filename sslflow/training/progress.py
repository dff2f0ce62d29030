"""Progress lines of training tasks, and which process of a torchrun job speaks for it."""

from __future__ import annotations

import logging
import os
import sys


def is_main_process() -> bool:
    """Rank 0 of a torchrun (Elastic) job, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


PROGRESS_LOGGERS = ("ssl_models", "sslflow.training", "tasks.evaluate", "tasks.self_train")


def show_progress() -> None:
    """Send the progress lines of training and evaluation (epochs, search points, self-training steps, each model
    evaluated) to stderr, in this process and Elastic workers: no stage runs longer than a few seconds in silence."""
    for name in PROGRESS_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = (
            False  # once: mlflow.pytorch's import gives the root logger a handler of its own (basicConfig)
        )
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
