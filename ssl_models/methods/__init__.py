"""Self-supervised methods, one module each, and the registry the pipeline's ``method`` setting names.

Adding a method: a module here with a subclass of ``SSLMethod`` (its heads, its loss in ``forward``, its
target networks and extra state as submodules and buffers) and one line in ``METHODS``. The loop in
``ssl_models.train`` gives it pairs of views; which images pair up (two views of one image, or two
images of one case: MICLe) is the data's choice, so every method works with case pairs.
"""

from __future__ import annotations

from torch import nn

from ssl_models.methods.base import SSLMethod
from ssl_models.methods.byol import BYOL
from ssl_models.methods.dino import DINO
from ssl_models.methods.distill import Distillation
from ssl_models.methods.moco import MoCoV2
from ssl_models.methods.simclr import SimCLR

# The name a PretrainConfig's ``method`` gives -> the method's class (its ``label`` names it in reports).
METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco": MoCoV2,
    "byol": BYOL,
    "dino": DINO,
    "distill": Distillation,
}


def build_method(name: str, encoder: nn.Module, settings, *, teacher: nn.Module | None = None) -> SSLMethod:
    """The method ``name`` of METHODS around ``encoder``, its hyper-parameters read from ``settings`` (a
    PretrainConfig); ``teacher``: the frozen network a method with ``needs_teacher`` (distillation) learns from, None
    for the others."""
    if name not in METHODS:
        raise ValueError(f"unknown self-supervised method {name!r}; choose one of {sorted(METHODS)}")
    if METHODS[name].needs_teacher:
        return METHODS[name].from_config(encoder, settings, teacher=teacher)
    if teacher is not None:
        raise ValueError(f"method {name!r} takes no teacher; distillation from a teacher is method 'distill'")
    return METHODS[name].from_config(encoder, settings)


__all__ = ["METHODS", "SSLMethod", "build_method"]
