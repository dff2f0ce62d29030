"""Registering the selected model: a new version of the registered model as ``challenger``, gated for ``champion``.

Selection is by validation accuracy, never by test accuracy. On a gate pass the old champion becomes
``previous_champion``; on a fail no alias but ``challenger`` moves, and the reason is logged and
tagged (``gate.decision``).

Idempotent: a complete version with the same checkpoint sha256 and pipeline run is reused, not
registered or gated again. If anything after the version is created fails, the moved aliases are put
back and the version is deleted; if the server is gone and that is impossible, the version stays
tagged ``incomplete`` and the next attempt of the same pipeline run undoes it before registering again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Protocol

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from torch import nn

from ssl_models.augment import FINETUNE_AUGMENT
from sslflow.config import RegistryConfig
from sslflow.evaluation import EvaluatedModel
from sslflow.registry.aliases import (
    ALIASES_BEFORE_TAG,
    CHALLENGER,
    CHAMPION,
    COMPLETE,
    GATE_CHAMPION_TAG,
    INCOMPLETE,
    PREVIOUS_CHAMPION,
    STATE_TAG,
    aliases_of,
    encode_aliases,
    undo_registration,
)
from sslflow.registry.gate import Accuracies, GateDecision, promotion_gate
from sslflow.registry.record import Registration
from sslflow.registry.serving import (
    CLASS_NAMES_TAG,
    MODEL_PIP_REQUIREMENTS,
    ONNX_FILE,
    SERVING_FORMAT,
    SERVING_TAG,
    GateSets,
    RegisteredClassifier,
    decode_class_names,
    encode_class_names,
    export_onnx,
    score,
)
from sslflow.tracking.provenance import code_version
from sslflow.tracking.server import is_unreachable
from sslflow.tracking.store import registry_lock

log = logging.getLogger(__name__)


class SelectedModel(EvaluatedModel, Protocol):
    """What registration reads of a fine-tuned model (tasks.shared.FinetunedModel has it)."""

    encoder_name: str
    in_channels: int
    image_size: int
    content_sha256: str
    mlflow_run_id: str
    selectable: bool  # False: a self-trained student that did not beat its teacher on validation
    initial_weights: str  # the user's weights its encoder's ladder started from ("" for random ones), and their sha256
    initial_weights_sha256: str


def _registration(registry: MlflowClient, version: ModelVersion, note: str = "") -> Registration:
    tags, aliases = version.tags, aliases_of(registry, version.name)
    return Registration(
        model_name=version.name,
        version=str(version.version),
        aliases=sorted(alias for alias, number in aliases.items() if number == str(version.version)),
        init=tags.get("init", ""),
        probe=tags.get("probe", ""),
        label_fraction=float(tags.get("label_fraction", "0")),
        in_domain_accuracy=float(tags.get("in_domain_accuracy", "nan")),
        shift_accuracy=float(tags.get("shift_accuracy", "nan")),
        promoted=tags.get("gate.promoted") == "true",
        decision=note + tags.get("gate.decision", ""),
        champion_version=aliases.get(CHAMPION, ""),
    )


def find_registered(
    registry: MlflowClient, model_name: str, checkpoint_sha256: str, parent_run_id: str
) -> Registration | None:
    """This pipeline run's complete registration of this checkpoint, if any; undoes incomplete ones it finds."""
    same_run = (
        f"name = '{model_name}' and tags.checkpoint_sha256 = '{checkpoint_sha256}' "
        f"and tags.pipeline_run_id = '{parent_run_id}'"
    )
    for earlier in registry.search_model_versions(same_run):
        if earlier.tags.get(STATE_TAG) == COMPLETE:
            return _registration(registry, earlier, note="already registered by this pipeline run; ")
        undo_registration(registry, model_name, str(earlier.version), earlier.tags)
    return None


def version_tags(
    best: SelectedModel, challenger: Accuracies, data_tags: dict[str, str], parent_run_id: str
) -> dict[str, str]:
    """The tags a new version is created with (data_tags: names and sha256 of the in-domain and shift data sets)."""
    return {
        "checkpoint_sha256": best.content_sha256,
        "pipeline_run_id": parent_run_id,
        "code_version": code_version(),
        **data_tags,
        "init": best.init,
        "probe": best.probe,
        "label_fraction": f"{best.label_fraction:g}",
        "num_labels": str(best.num_labels),
        "val_accuracy": f"{best.val_accuracy:.6f}",
        "in_domain_accuracy": f"{challenger.in_domain:.6f}",
        "shift_accuracy": f"{challenger.shift:.6f}",
        CLASS_NAMES_TAG: encode_class_names(best.class_names),
        "encoder_name": best.encoder_name,
        "finetune_mlflow_run_id": best.mlflow_run_id,
        SERVING_TAG: SERVING_FORMAT,
        STATE_TAG: INCOMPLETE,
        **initial_weights_tags(best),
    }


def initial_weights_tags(best: SelectedModel) -> dict[str, str]:
    """The lineage of the weights the model's ladder started from: the user's (source URI and sha256) or "random"."""
    if not best.initial_weights:
        return {"initial_weights.source": "random"}
    return {"initial_weights.source": best.initial_weights, "initial_weights.sha256": best.initial_weights_sha256}


def _champion_scores(
    registry: MlflowClient, model_name: str, version: str, gate_sets: GateSets
) -> tuple[Accuracies | None, str]:
    """The champion scored on this run's gate sets, or (None, why it cannot be).

    Whatever stops the champion from being loaded or scored (a deleted artifact, another MLflow or torch
    version, other classes, another input shape) is a reason, never an exception: the registry must not
    be blocked by one unusable version. An unreachable server still stops the stage (it is no reason).
    """
    try:
        champion = registry.get_model_version(model_name, version)
        model = mlflow.pytorch.load_model(f"models:/{model_name}/{version}", map_location="cpu")
        if champion.tags.get(SERVING_TAG) != SERVING_FORMAT:  # registered before models carried their preprocessing
            model = RegisteredClassifier(model, FINETUNE_AUGMENT)
        return score(model, decode_class_names(champion.tags.get(CLASS_NAMES_TAG, "")), gate_sets), ""
    except Exception as error:  # noqa: BLE001 - reported in the gate decision, see the docstring
        if is_unreachable(error):
            raise
        return (
            None,
            f"champion version {version} cannot be loaded or scored on this run's gate sets ({type(error).__name__}: "
            f"{error})",
        )


def _gate(
    registry: MlflowClient, model_name: str, challenger: Accuracies, gate_sets: GateSets, config: RegistryConfig
) -> tuple[dict[str, str], GateDecision]:
    """(the aliases as they are now, the decision). Gates again if another run moved the champion meanwhile."""
    aliases = aliases_of(registry, model_name)
    for _ in range(3):
        champion = aliases.get(CHAMPION, "")
        if not champion:
            decision = promotion_gate(challenger, None, config)
        else:
            scores, incomparable = _champion_scores(registry, model_name, champion, gate_sets)
            if scores is None:
                decision = GateDecision(
                    False, f"kept champion: {incomparable}; move the alias by hand if the change is intended"
                )
            else:
                decision = promotion_gate(challenger, scores, config)
        aliases = aliases_of(registry, model_name)
        if aliases.get(CHAMPION, "") == champion:
            return aliases, decision
    raise RuntimeError(
        f"the champion of {model_name} moved three times while this run was being gated; run register again"
    )


def _gate_and_move_aliases(
    registry: MlflowClient,
    name: str,
    number: str,
    challenger: Accuracies,
    gate_sets: GateSets,
    config: RegistryConfig,
    tags: dict[str, str],
) -> GateDecision:
    """Gate version ``number``, record the aliases as they were, move them, mark the version complete."""
    with registry_lock():  # sqlite: one gate at a time across processes; a server: _gate re-checks instead
        aliases_before, decision = _gate(registry, name, challenger, gate_sets, config)
        champion = aliases_before.get(CHAMPION, "")
        gate_tags = {
            "gate.promoted": str(decision.promote).lower(),
            "gate.decision": decision.reason,
            GATE_CHAMPION_TAG: champion,
            ALIASES_BEFORE_TAG: encode_aliases(aliases_before),
        }
        for key, value in gate_tags.items():
            registry.set_model_version_tag(name, number, key, value)
        tags.update(gate_tags)  # undo_registration reads aliases_before from here
        registry.set_registered_model_alias(name, CHALLENGER, number)
        if decision.promote:
            if champion:
                registry.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion)
            registry.set_registered_model_alias(name, CHAMPION, number)
        registry.set_model_version_tag(name, number, STATE_TAG, COMPLETE)
    return decision


def register_version(
    registry: MlflowClient,
    model_uri: str,
    tags: dict[str, str],
    challenger: Accuracies,
    gate_sets: GateSets,
    config: RegistryConfig,
) -> Registration:
    """The registration transaction: create the version, gate, move aliases; on any failure undo all of it."""
    name = config.model_name
    number = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        decision = _gate_and_move_aliases(registry, name, number, challenger, gate_sets, config, tags)
    except BaseException:
        try:
            undo_registration(registry, name, number, tags)
        except Exception as undo_error:  # noqa: BLE001 - the server is gone: the next attempt of this run undoes it
            log.error(
                "registry: could not undo version %s of %s (left tagged %s=%s): %s",
                number,
                name,
                STATE_TAG,
                INCOMPLETE,
                undo_error,
            )
        raise
    log.warning("registry: %s version %s: %s", name, number, decision.reason)
    return _registration(registry, registry.get_model_version(name, number))


def register_selected(
    registry: MlflowClient,
    best: SelectedModel,
    classifier: nn.Module,
    gate_sets: GateSets,
    data_tags: dict[str, str],
    config: RegistryConfig,
    parent_run_id: str,
) -> Registration:
    """Register ``best`` (its trained ``classifier``, with an ONNX copy) unless this pipeline run already has; runs
    inside a stage run."""
    existing = find_registered(registry, config.model_name, best.content_sha256, parent_run_id)
    if existing is not None:
        return existing
    mlflow.log_params({"selected.init": best.init, "selected.label_fraction": best.label_fraction})
    served = RegisteredClassifier(classifier, FINETUNE_AUGMENT).eval()
    challenger = score(served, best.class_names, gate_sets)
    example = np.zeros((2, best.in_channels, best.image_size, best.image_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        onnx_file = export_onnx(served, gate_sets["in_domain"][0], Path(folder) / ONNX_FILE)
        logged = mlflow.pytorch.log_model(
            served,
            name="model",
            input_example=example,
            pip_requirements=MODEL_PIP_REQUIREMENTS,
            extra_files=[str(onnx_file)],
        )
    registration = register_version(
        registry,
        logged.model_uri,
        version_tags(best, challenger, data_tags, parent_run_id),
        challenger,
        gate_sets,
        config,
    )
    mlflow.set_tags({"registry.decision": registration.decision, "registry.version": registration.version})
    mlflow.log_metrics({"in_domain_accuracy": challenger.in_domain, "shift_accuracy": challenger.shift})
    return registration
