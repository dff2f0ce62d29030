"""The promotion gate, a pure function: does the challenger take ``champion``?

The challenger and the current champion are both scored on this run's gate split (IngestConfig.gate_fraction) of the
in-domain data and of the shift set, so they are compared on the same images. The gate split is disjoint from the test
split (which is only reported) and from the validation split that chose the challenger, so neither selection nor
promotion turns the test split into a selection set. The challenger is promoted only if it is better in-domain (within
RegistryConfig.non_inferiority_margin) and no worse under shift (within RegistryConfig.max_shift_drop); never for being
newer."""

from __future__ import annotations

from dataclasses import dataclass

from sslflow.config import RegistryConfig

EPSILON = 1e-9  # accuracy differences smaller than this count as equal


@dataclass(frozen=True)
class Accuracies:
    """Accuracy in [0, 1] on the gate split of the in-domain data and of the shift set."""

    in_domain: float
    shift: float


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def promotion_gate(challenger: Accuracies, champion: Accuracies | None, config: RegistryConfig) -> GateDecision:
    """Whether the challenger takes ``champion``. Both must be scored on the same gate sets.

    Passes when there is no champion, or when both hold:
        in-domain:  challenger > champion - non_inferiority_margin  (margin 0: strictly better; a tie fails)
        shift:      challenger >= champion - max_shift_drop         (drop 0: no worse)
    """
    if champion is None:
        return GateDecision(True, "promoted: no champion yet")
    in_domain_floor = champion.in_domain - config.non_inferiority_margin
    shift_floor = champion.shift - config.max_shift_drop
    checks = [
        (
            challenger.in_domain - in_domain_floor > EPSILON,
            (
                f"in-domain {challenger.in_domain:.4f} vs champion {champion.in_domain:.4f} "
                f"(must be > {in_domain_floor:.4f}, non_inferiority_margin {config.non_inferiority_margin:g})"
            ),
        ),
        (
            challenger.shift - shift_floor > -EPSILON,
            (
                f"shift {challenger.shift:.4f} vs champion {champion.shift:.4f} "
                f"(must be >= {shift_floor:.4f}, max_shift_drop {config.max_shift_drop:g})"
            ),
        ),
    ]
    if all(passed for passed, _ in checks):
        return GateDecision(True, "promoted: " + "; ".join(text for _, text in checks))
    return GateDecision(False, "kept champion: " + "; ".join(text for passed, text in checks if not passed))
