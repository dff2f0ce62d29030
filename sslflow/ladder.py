"""The pretraining ladder and the arms of the comparison, declared once: tasks, tables, charts, comparisons,
self-training and benchmarks/quality.py iterate this module instead of naming arms.

The ladder (the MICLe recipe, Azizi et al., 2021, arXiv 2101.05224): a self-supervised method on generic
images, then continued on the domain images (views of one image), or continued on the domain images with
case pairs (two images of one case as the two views). Each rung's arm is the method's name and the rung's
suffix: for SimCLR "simclr", "simclr+domain", "simclr+micle"; for MoCo v2 "moco", "moco+domain",
"moco+micle". Beside them the floors (a linear probe on pixels, a network trained from scratch) and the
self-trained student of the top rung ("simclr+micle+student") and its control, the student of the model fine-tuned
from scratch ("scratch+student").
"""

from __future__ import annotations

from dataclasses import dataclass

from ssl_models.methods import METHODS
from sslflow.errors import Refusal

PIXELS_ARM = "pixels"  # the floor arm: a linear probe on the raw pixels (its encoder: PIXELS_ENCODER)
PIXELS_ENCODER = "pixels"  # ssl_models.encoders' encoder of the pixels arm: the image flattened, no weights
SCRATCH_ARM = "scratch"  # the floor arm: the encoder fine-tuned from random weights
FLOORS = (PIXELS_ARM, SCRATCH_ARM)  # arms without self-supervision, first in every table
STUDENT_SUFFIX = "+student"


@dataclass(frozen=True)
class Rung:
    """One step of the pretraining ladder.

    name: the rung ("generic", "domain", "case_pairs"). suffix: appended to the method's name to make the
    arm. stage: the pretraining task's name (MLflow run name). case_pairs: pairs are two images of one case
    (MICLe) rather than two views of one image. step: what the rung adds over the one before ("{method}" is
    the method's label), for the effect lines of the report.
    """

    name: str
    suffix: str
    stage: str
    case_pairs: bool
    step: str


LADDER = (
    Rung("generic", "", "pretrain_generic", case_pairs=False, step=""),
    Rung("domain", "+domain", "pretrain_domain", case_pairs=False, step="domain {method}"),
    Rung("case_pairs", "+micle", "pretrain_case_pairs", case_pairs=True, step="MICLe pairs"),
)
RUNGS = {rung.name: rung for rung in LADDER}


class LadderError(Refusal, ValueError):
    """The two pretraining configurations of one pipeline name different methods."""


def arm(method: str, rung: str) -> str:
    """The arm (FinetunedModel.init) of ``method`` at the rung named ``rung``: arm("simclr", "case_pairs") ==
    "simclr+micle"."""
    return method + RUNGS[rung].suffix


def ladder_arms(method: str) -> list[str]:
    """The arms of ``method``, bottom rung first."""
    return [arm(method, rung.name) for rung in LADDER]


def student_arm(teacher_encoder_arm: str) -> str:
    """The arm of a student self-trained from the encoder of ``teacher_encoder_arm``."""
    return teacher_encoder_arm + STUDENT_SUFFIX


def ladder_steps(method: str) -> list[tuple[str, str, str]]:
    """(arm, the arm below it, what the step adds) for each rung above the first: the effects the report tests."""
    label = METHODS[method].label if method in METHODS else method
    arms = ladder_arms(method)
    return [(arms[i], arms[i - 1], LADDER[i].step.format(method=label)) for i in range(1, len(LADDER))]


def arm_order(init: str) -> tuple:
    """Sort key of an arm: floors (scratch's student after scratch), then each method's rungs bottom up (methods in
    METHODS order), its student last; unknown arms at the end."""
    base, student = (init[: -len(STUDENT_SUFFIX)], 1) if init.endswith(STUDENT_SUFFIX) else (init, 0)
    if base in FLOORS:
        return (0, FLOORS.index(base), student)
    for method_index, method in enumerate(METHODS):
        if base in ladder_arms(method):
            return (1 + method_index, ladder_arms(method).index(base), student)
    return (99, init)


def is_self_supervised(init: str) -> bool:
    """Whether an arm's weights come from self-supervised pretraining (a ladder arm or its student), not from a floor or
    a floor's student ("scratch+student")."""
    return method_of(init) is not None


def method_of(init: str) -> str | None:
    """The method of a ladder arm or student ("moco+micle+student" -> "moco"); None for a floor or unknown arm."""
    base = init.split("+", 1)[0]
    return base if base in METHODS and init not in FLOORS else None


def check_initial_weights(rung: str, initial_weights: str) -> None:
    """LadderError if a rung above the generic one is given initial weights: it starts from the rung below it."""
    if initial_weights and rung != LADDER[0].name:
        raise LadderError(
            f"initial_weights={initial_weights!r} is set in the configuration of the {rung!r} rung, which starts from "
            "the generic rung's encoder: give the weights in the generic rung's configuration ('generic_pretraining') "
            "and leave the domain one's ('domain_pretraining') empty"
        )


def continued_method(generic_method: str, domain_method: str, *, default_method: str) -> str:
    """The method of the domain rungs: the generic rung's (``generic_method``), which they continue; the method is
    given once, in the generic rung's configuration. LadderError if the domain configuration names another method
    than its default (``default_method``, PretrainConfig's): the ladder compares rungs, not methods."""
    if domain_method not in (generic_method, default_method):
        raise LadderError(
            f"the domain pretraining config has method={domain_method!r} but the generic rung's encoder was trained "
            f"with method={generic_method!r}: the domain rungs continue the generic rung's method; leave "
            "'method' out of domain_pretraining (or give the generic one) and set it in generic_pretraining"
        )
    return generic_method
