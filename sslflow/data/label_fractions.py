"""The label fractions a run fine-tunes at, checked before anything runs (tasks/pipeline_run.py, tasks/data_run.py)
and again by validate's expectations (sslflow/data/validation.py). Kept apart from that suite so that the tasks which
only check the fractions do not load great-expectations (seconds of import in every pod and every `pyflyte run`)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from sslflow.errors import Refusal


class LabelFractionError(Refusal, ValueError):
    """A label fraction outside (0, 1]."""


def check_label_fractions(label_fractions: Sequence[float]) -> None:
    """LabelFractionError (a ValueError) naming the offending entry unless every fraction f is a number with 0 < f <= 1.

    A label fraction is the share of the training labels one fine-tune uses (1.0: all of them); an
    empty list (no fine-tuning) is fine.
    """
    for index, fraction in enumerate(label_fractions):
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
            raise LabelFractionError(
                f"label_fractions[{index}] = {fraction!r} is not a fraction in (0, 1]: each is the share of the "
                "training labels one fine-tune uses, so it must be above 0 and at most 1 (e.g. [0.01, 0.1, 1.0])"
            )
