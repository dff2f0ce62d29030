"""Label names -> class indices: the one place a label string becomes a model target."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_indices(label_names: Sequence[str], class_names: Sequence[str], where: str) -> np.ndarray:
    """(N,) int64 index of each label name in ``class_names``.

    Raises ValueError naming ``where`` and the unknown labels when a name is not a class.
    """
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(label_names) - index.keys())
    if unknown:
        raise ValueError(f"{where}: labels {unknown} are not among the model's classes {list(class_names)}")
    return np.array([index[name] for name in label_names], dtype=np.int64)
