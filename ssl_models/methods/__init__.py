"""Self-supervised methods, one module each, and the registry the pipeline's ``method`` setting names.

Adding a method: a module here with a subclass of ``SSLMethod`` (its heads, its loss from ``ssl_models.losses`` in
``forward``, its target networks and extra state as submodules and buffers) and, when it has settings of its own,
a frozen dataclass beside it named by its ``settings_type``; then one line in ``METHODS``. ``PretrainConfig`` holds
what every method shares and the method's settings as ``method_settings`` (a dict checked here against the
method's dataclass, which gives the defaults). The loop in ``ssl_models.pretraining`` gives it pairs of views;
which images pair up (two views of one image, or two images of one case: MICLe) is the data's choice, so every
method works with case pairs.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from torch import nn

from ssl_models.methods.base import SSLMethod
from ssl_models.methods.byol import BYOL
from ssl_models.methods.dino import DINO
from ssl_models.methods.distill import Distillation
from ssl_models.methods.moco import MoCoV2
from ssl_models.methods.simclr import SimCLR

# The name a PretrainConfig's ``method`` gives -> the method's class (its ``label`` names it in reports, its
# ``settings_type`` is its settings dataclass).
METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco": MoCoV2,
    "byol": BYOL,
    "dino": DINO,
    "distill": Distillation,
}


def method_class(name: str) -> type[SSLMethod]:
    """The class METHODS registers as ``name``: the one place a method name is checked."""
    if name not in METHODS:
        raise ValueError(
            f"unknown self-supervised method {name!r} (PretrainConfig.method); choose one of {sorted(METHODS)}"
        )
    return METHODS[name]


def method_settings(name: str, given: Mapping[str, object]):
    """Method ``name``'s settings dataclass built from ``given`` (PretrainConfig.method_settings), its defaults for
    the keys not given. An unknown method, an unknown key, or a value of the wrong type is refused with a
    ValueError naming the method and the field; an int is taken for a float field (JSON writes 1.0 as 1)."""
    settings_type = method_class(name).settings_type
    types = typing.get_type_hints(settings_type)
    known = [field.name for field in dataclasses.fields(settings_type)]
    values = {}
    for key, value in given.items():
        if key not in types:
            raise ValueError(
                f"PretrainConfig.method_settings has {key!r}, which method {name!r} does not take; "
                f"its settings are {known or 'none'} (ssl_models.methods, docs/configuration.md)"
            )
        values[key] = _checked(name, key, value, types[key])
    return settings_type(**values)


def _checked(method: str, key: str, value: object, wanted: type) -> object:
    """``value`` as a ``wanted`` (float, int, str or bool) for setting ``key`` of ``method``, or a ValueError."""
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, wanted) and not (wanted is not bool and isinstance(value, bool)):
        return value
    raise ValueError(
        f"PretrainConfig.method_settings[{key!r}] of method {method!r} must be of type {wanted.__name__}, "
        f"got {value!r} ({type(value).__name__})"
    )


def build_method(name: str, encoder: nn.Module, config, *, teacher: nn.Module | None = None) -> SSLMethod:
    """The method ``name`` of METHODS around ``encoder``, its settings read from ``config`` (a PretrainConfig: its
    ``method_settings`` and the shared fields); ``teacher``: the frozen network a method with ``needs_teacher``
    (distillation) learns from, None for the others."""
    method = method_class(name)
    settings = method_settings(name, config.method_settings)
    if method.needs_teacher:
        return method.from_config(encoder, settings, config, teacher=teacher)
    if teacher is not None:
        raise ValueError(f"method {name!r} takes no teacher; distillation from a teacher is method 'distill'")
    return method.from_config(encoder, settings, config)


__all__ = ["METHODS", "SSLMethod", "build_method", "method_class", "method_settings"]
