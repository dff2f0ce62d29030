"""What a registration reports: the version, its aliases and the gate's decision (a task output; no mlflow here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Registration:
    model_name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    init: str = ""
    probe: str = ""
    label_fraction: float = 0.0
    in_domain_accuracy: float = 0.0
    shift_accuracy: float = 0.0
    promoted: bool = False
    decision: str = ""
    champion_version: str = ""  # the champion after this registration
