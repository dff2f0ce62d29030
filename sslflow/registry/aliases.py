"""The registered model's aliases: reading them, putting them back after a failed registration, rollback.

Order of writes of a registration (sslflow/registry/registration.py), so that a failure never leaves
a half-registered version in use: create the version tagged ``sslflow.registration=incomplete`` ->
gate -> record the aliases as they were (``sslflow.aliases_before``) -> move aliases ->
``sslflow.registration=complete``. ``undo_registration`` reverses that from the recorded aliases.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sslflow.errors import Refusal
from sslflow.tracking.server import explain_unreachable_server
from sslflow.tracking.store import client

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
MOVED_ALIASES = (CHALLENGER, PREVIOUS_CHAMPION, CHAMPION)
STATE_TAG, INCOMPLETE, COMPLETE = "sslflow.registration", "incomplete", "complete"
ALIASES_BEFORE_TAG = "sslflow.aliases_before"  # e.g. "challenger=4,champion=3,previous_champion=2"
GATE_CHAMPION_TAG = "gate.champion_version"  # the champion the gate compared with ("" if none)

log = logging.getLogger(__name__)


class NothingToRollBack(Refusal, ValueError):
    """rollback asked of a registered model without a previous_champion."""


def aliases_of(registry: MlflowClient, model_name: str) -> dict[str, str]:
    """{alias: version} of a registered model; {} if the model does not exist yet."""
    try:
        return {alias: str(version) for alias, version in registry.get_registered_model(model_name).aliases.items()}
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def encode_aliases(aliases: dict[str, str]) -> str:
    return ",".join(f"{alias}={aliases.get(alias, '')}" for alias in MOVED_ALIASES)


def decode_aliases(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {alias: version for alias, version in pairs if version}


def undo_registration(registry: MlflowClient, model_name: str, number: str, tags: dict[str, str]) -> None:
    """Put back the aliases a failed registration had moved (its aliases_before tag), then delete the version."""
    before = decode_aliases(tags.get(ALIASES_BEFORE_TAG, ""))
    now = aliases_of(registry, model_name)
    for alias in (CHAMPION, CHALLENGER):  # deleting the version drops these if they point to it
        if now.get(alias) == number and before.get(alias):
            registry.set_registered_model_alias(model_name, alias, before[alias])
    moved_previous = before.get(CHAMPION) and now.get(PREVIOUS_CHAMPION) == before[CHAMPION] != before.get(
        PREVIOUS_CHAMPION
    )
    if moved_previous:
        if before.get(PREVIOUS_CHAMPION):
            registry.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, before[PREVIOUS_CHAMPION])
        else:
            registry.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    registry.delete_model_version(model_name, number)
    log.warning(
        "registry: deleted incomplete version %s of %s and restored the aliases it had moved", number, model_name
    )


def _version_exists(registry: MlflowClient, model_name: str, number: str) -> bool:
    try:
        registry.get_model_version(model_name, number)
        return True
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def rollback_aliases(model_name: str) -> str:
    """``champion`` back to ``previous_champion``; ``previous_champion`` to the champion that one had replaced."""
    with explain_unreachable_server():
        registry = client()
        aliases = aliases_of(registry, model_name)
        if PREVIOUS_CHAMPION not in aliases:
            raise NothingToRollBack(
                f"registered model {model_name!r} has no {PREVIOUS_CHAMPION!r} alias, so there is nothing to roll "
                f"back to (aliases now: {aliases or 'none'}). Set the champion by hand: "
                f"MlflowClient().set_registered_model_alias({model_name!r}, 'champion', <version>)"
            )
        demoted, restored = aliases.get(CHAMPION, ""), aliases[PREVIOUS_CHAMPION]
        registry.set_registered_model_alias(model_name, CHAMPION, restored)
        older = registry.get_model_version(model_name, restored).tags.get(GATE_CHAMPION_TAG, "")
        if older and older != restored and _version_exists(registry, model_name, older):
            registry.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, older)
        else:
            older = ""
            registry.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
        if demoted:
            when = datetime.now(UTC).isoformat(timespec="seconds")
            registry.set_model_version_tag(
                model_name, demoted, "rolled_back", f"{when}: champion moved back to version {restored}"
            )
    return (
        f"{model_name}: champion moved from version {demoted or '(none)'} back to version {restored}; "
        f"previous_champion is now {older or 'unset'}"
    )
