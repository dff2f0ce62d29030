"""register: the best fine-tuned model becomes a version of the registered model (alias ``challenger``);
a promotion gate decides whether it also becomes ``champion``. rollback_champion undoes a promotion.

Selection: the best model by validation accuracy (never by test accuracy).

Gate (``promotion_gate``, a pure function): the challenger and the current champion are both scored
on this run's in-domain test split and shift set, so they are compared on the same images. The
challenger is promoted only if it is better in-domain (within RegistryConfig.non_inferiority_margin)
and no worse under shift (within RegistryConfig.max_shift_drop); never for being newer. On a pass the
old champion becomes ``previous_champion``; on a fail no alias but ``challenger`` moves, and the
reason is logged and tagged (``gate.decision``). Aliases only, not the deprecated stages.

Order of writes, so that a failure never leaves a half-registered version in use:
log the model -> create the version with all its tags and ``sslflow.registration=incomplete`` ->
gate -> record the aliases as they were -> move aliases -> ``sslflow.registration=complete``.
If anything after the create fails, the moved aliases are put back and the version is deleted. If
the server is gone and that is impossible, the version stays tagged ``incomplete``, and the next
attempt of the same pipeline run (a Flyte retry, a rerun) undoes it before registering again.

Idempotent: a complete version with the same checkpoint sha256 and pipeline run is reused, not
registered or gated again (besides, the task is cached).

What the registry serves (``RegisteredClassifier``): float32 images (B, C, H, W) with pixel values
0-255 in; class probabilities (B, num_classes) out, columns in the order of the version's
``class_names`` tag. MLflow saves it with torch.export (its default "pt2" format), so loading needs
torch and mlflow, not this project's code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import mlflow
import numpy as np
import torch
from flytekit import Cache, Resources, task
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from images.specs import cpu_image
from ssl_models.augment import FINETUNE_AUGMENT, AugmentConfig, normalise
from ssl_models.evaluate import accuracy
from tasks.artifacts import Dataset, FinetunedModel, read_dataset
from tasks.config import RegistryConfig
from tasks.evaluate import load_classifier
from tasks.manifest import labelled_rows
from tasks.tracking import (
    client,
    code_version,
    explain_unreachable_server,
    registry_lock,
    stage_run,
)

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
MOVED_ALIASES = (CHALLENGER, PREVIOUS_CHAMPION, CHAMPION)
STATE_TAG, INCOMPLETE, COMPLETE = "sslflow.registration", "incomplete", "complete"
ALIASES_BEFORE_TAG = "sslflow.aliases_before"  # e.g. "challenger=4,champion=3,previous_champion=2"
SERVING_TAG, SERVING_FORMAT = "sslflow.serving", "float32 pixels 0-255 in, probabilities out"
GATE_CHAMPION_TAG = "gate.champion_version"  # the champion the gate compared with ("" if none)
MODEL_PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "mlflow==3.17.2"]
EPSILON = 1e-9  # accuracy differences smaller than this count as equal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accuracies:
    """Accuracy in [0, 1] on the in-domain test split and on the shift set."""

    in_domain: float
    shift: float


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def promotion_gate(challenger: Accuracies, champion: Accuracies | None, config: RegistryConfig) -> GateDecision:
    """Whether the challenger takes ``champion``. Both must be scored on the same test sets.

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


class RegisteredClassifier(nn.Module):
    """What the registry serves: the evaluation view (scale, resize, mean/std) inside, softmax outside.

    images (B, C, H, W) float32, pixel values 0-255 -> (B, num_classes) float32 class probabilities.
    """

    def __init__(self, classifier: nn.Module, view: AugmentConfig):
        super().__init__()
        self.classifier = classifier
        self.view = view

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(normalise(images / 255.0, self.view)).float(), dim=1)


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


TestSets = dict[str, tuple[np.ndarray, np.ndarray]]  # eval set -> (images (N, C, H, W) uint8, label names (N,))


def _labelled_test_split(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, label_names, _ = labelled_rows(*read_dataset(dataset), "test")
    return images, label_names


@torch.no_grad()
def score(model: nn.Module, class_names: list[str], test_sets: TestSets) -> Accuracies:
    """Accuracy of a RegisteredClassifier (in eval mode) on each test set. ValueError if a test label is not one of class_names."""
    accuracies = {}
    for eval_set, (images, label_names) in test_sets.items():
        unknown = sorted(set(label_names) - set(class_names))
        if unknown:
            raise ValueError(f"{eval_set} test labels {unknown} are not among the model's classes {class_names}")
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index[name] for name in label_names])
        batches = [model(torch.from_numpy(images[start : start + 512]).float()) for start in range(0, len(images), 512)]
        accuracies[eval_set] = accuracy(torch.cat(batches).numpy(), labels)
    return Accuracies(in_domain=accuracies["in_domain"], shift=accuracies["shift"])


def aliases_of(registry: MlflowClient, model_name: str) -> dict[str, str]:
    """{alias: version} of a registered model; {} if the model does not exist yet."""
    try:
        return {alias: str(version) for alias, version in registry.get_registered_model(model_name).aliases.items()}
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def _encode_aliases(aliases: dict[str, str]) -> str:
    return ",".join(f"{alias}={aliases.get(alias, '')}" for alias in MOVED_ALIASES)


def _decode_aliases(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {alias: version for alias, version in pairs if version}


def _champion_scores(registry: MlflowClient, model_name: str, version: str, test_sets: TestSets) -> tuple[Accuracies | None, str]:
    """The champion scored on this run's test sets, or (None, why it cannot be)."""
    champion = registry.get_model_version(model_name, version)
    model = mlflow.pytorch.load_model(f"models:/{model_name}/{version}", map_location="cpu")
    if champion.tags.get(SERVING_TAG) != SERVING_FORMAT:  # registered before models carried their preprocessing
        model = RegisteredClassifier(model, FINETUNE_AUGMENT)
    class_names = champion.tags.get("class_names", "").split(",")
    try:
        return score(model, class_names, test_sets), ""
    except (ValueError, RuntimeError) as error:  # other classes, or another input shape
        return None, f"champion version {version} cannot be scored on this run's test sets ({error})"


def _gate(registry: MlflowClient, model_name: str, challenger: Accuracies, test_sets: TestSets, config: RegistryConfig) -> tuple[dict[str, str], GateDecision]:
    """(the aliases as they are now, the decision). Gates again if another run moved the champion meanwhile."""
    aliases = aliases_of(registry, model_name)
    for _ in range(3):
        champion = aliases.get(CHAMPION, "")
        if not champion:
            decision = promotion_gate(challenger, None, config)
        else:
            scores, incomparable = _champion_scores(registry, model_name, champion, test_sets)
            if scores is None:
                decision = GateDecision(False, f"kept champion: {incomparable}; move the alias by hand if the change is intended")
            else:
                decision = promotion_gate(challenger, scores, config)
        aliases = aliases_of(registry, model_name)
        if aliases.get(CHAMPION, "") == champion:
            return aliases, decision
    raise RuntimeError(f"the champion of {model_name} moved three times while this run was being gated; run register again")


def undo_registration(registry: MlflowClient, model_name: str, number: str, tags: dict[str, str]) -> None:
    """Put back the aliases a failed registration had moved (its aliases_before tag), then delete the version."""
    before = _decode_aliases(tags.get(ALIASES_BEFORE_TAG, ""))
    now = aliases_of(registry, model_name)
    for alias in (CHAMPION, CHALLENGER):  # deleting the version drops these if they point to it
        if now.get(alias) == number and before.get(alias):
            registry.set_registered_model_alias(model_name, alias, before[alias])
    moved_previous = before.get(CHAMPION) and now.get(PREVIOUS_CHAMPION) == before[CHAMPION] != before.get(PREVIOUS_CHAMPION)
    if moved_previous:
        if before.get(PREVIOUS_CHAMPION):
            registry.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, before[PREVIOUS_CHAMPION])
        else:
            registry.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    registry.delete_model_version(model_name, number)
    log.warning("registry: deleted incomplete version %s of %s and restored the aliases it had moved", number, model_name)


def _version_exists(registry: MlflowClient, model_name: str, number: str) -> bool:
    try:
        registry.get_model_version(model_name, number)
        return True
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _registration(registry: MlflowClient, version: ModelVersion, note: str = "") -> Registration:
    tags, aliases = version.tags, aliases_of(registry, version.name)
    return Registration(
        model_name=version.name, version=str(version.version),
        aliases=sorted(alias for alias, number in aliases.items() if number == str(version.version)),
        init=tags.get("init", ""), probe=tags.get("probe", ""), label_fraction=float(tags.get("label_fraction", "0")),
        in_domain_accuracy=float(tags.get("in_domain_accuracy", "nan")), shift_accuracy=float(tags.get("shift_accuracy", "nan")),
        promoted=tags.get("gate.promoted") == "true", decision=note + tags.get("gate.decision", ""),
        champion_version=aliases.get(CHAMPION, ""),
    )  # fmt: skip


def register_best(models: list[FinetunedModel], in_domain: Dataset, shift: Dataset, config: RegistryConfig, parent_run_id: str) -> Registration:
    """The MLflow side of the register task; runs inside its stage run (mlflow.active_run())."""
    best = max(models, key=lambda model: (model.val_accuracy, model.init != "scratch", model.label_fraction))
    name, registry = config.model_name, client()
    same_run = f"name = '{name}' and tags.checkpoint_sha256 = '{best.content_sha256}' and tags.pipeline_run_id = '{parent_run_id}'"
    for earlier in registry.search_model_versions(same_run):
        if earlier.tags.get(STATE_TAG) == COMPLETE:
            return _registration(registry, earlier, note="already registered by this pipeline run; ")
        undo_registration(registry, name, str(earlier.version), earlier.tags)

    mlflow.log_params({"selected.init": best.init, "selected.label_fraction": best.label_fraction})
    test_sets = {"in_domain": _labelled_test_split(in_domain), "shift": _labelled_test_split(shift)}
    served = RegisteredClassifier(load_classifier(best), FINETUNE_AUGMENT).eval()
    challenger = score(served, best.class_names, test_sets)
    example = np.zeros((2, best.in_channels, best.image_size, best.image_size), dtype=np.float32)
    logged = mlflow.pytorch.log_model(served, name="model", input_example=example, pip_requirements=MODEL_PIP_REQUIREMENTS)
    tags = {
        "checkpoint_sha256": best.content_sha256, "pipeline_run_id": parent_run_id, "code_version": code_version(),
        "in_domain_data_sha256": in_domain.content_sha256, "shift_data_sha256": shift.content_sha256,
        "in_domain_data": in_domain.name, "shift_data": shift.name,
        "init": best.init, "probe": best.probe, "label_fraction": f"{best.label_fraction:g}", "num_labels": str(best.num_labels),
        "val_accuracy": f"{best.val_accuracy:.6f}", "in_domain_accuracy": f"{challenger.in_domain:.6f}",
        "shift_accuracy": f"{challenger.shift:.6f}", "class_names": ",".join(best.class_names),
        "encoder_name": best.encoder_name, "finetune_mlflow_run_id": best.mlflow_run_id,
        SERVING_TAG: SERVING_FORMAT, STATE_TAG: INCOMPLETE,
    }  # fmt: skip
    version = mlflow.register_model(logged.model_uri, name, tags=tags)
    number = str(version.version)
    try:
        with registry_lock():  # sqlite: one gate at a time across processes; a server: _gate re-checks instead
            aliases_before, decision = _gate(registry, name, challenger, test_sets, config)
            champion = aliases_before.get(CHAMPION, "")
            gate_tags = {
                "gate.promoted": str(decision.promote).lower(), "gate.decision": decision.reason,
                GATE_CHAMPION_TAG: champion, ALIASES_BEFORE_TAG: _encode_aliases(aliases_before),
            }  # fmt: skip
            for key, value in gate_tags.items():
                registry.set_model_version_tag(name, number, key, value)
            tags.update(gate_tags)
            registry.set_registered_model_alias(name, CHALLENGER, number)
            if decision.promote:
                if champion:
                    registry.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion)
                registry.set_registered_model_alias(name, CHAMPION, number)
            registry.set_model_version_tag(name, number, STATE_TAG, COMPLETE)
    except BaseException:
        try:
            undo_registration(registry, name, number, tags)
        except Exception as undo_error:  # noqa: BLE001 - the server is gone: the next attempt of this run undoes it
            log.error("registry: could not undo version %s of %s (left tagged %s=%s): %s", number, name, STATE_TAG, INCOMPLETE, undo_error)
        raise
    mlflow.set_tags({"registry.decision": decision.reason, "registry.version": number})
    mlflow.log_metrics({"in_domain_accuracy": challenger.in_domain, "shift_accuracy": challenger.shift})
    log.warning("registry: %s version %s: %s", name, number, decision.reason)
    return _registration(registry, registry.get_model_version(name, number))


@task(cache=Cache(version="2", ignored_inputs=("parent_run_id",)), container_image=cpu_image, requests=Resources(cpu="1", mem="4Gi"), retries=2)
def register(models: list[FinetunedModel], in_domain: Dataset, shift: Dataset, config: RegistryConfig, parent_run_id: str) -> Registration:
    """Register the best model by validation accuracy as ``challenger``; the promotion gate may make it ``champion``."""
    with stage_run(parent_run_id, "register", {"config": config}):
        return register_best(models, in_domain, shift, config, parent_run_id)


def roll_back(model_name: str) -> str:
    """``champion`` back to ``previous_champion``; ``previous_champion`` to the champion that one had replaced."""
    with explain_unreachable_server():
        registry = client()
        aliases = aliases_of(registry, model_name)
        if PREVIOUS_CHAMPION not in aliases:
            raise ValueError(
                f"registered model {model_name!r} has no {PREVIOUS_CHAMPION!r} alias, so there is nothing to roll back to "
                f"(aliases now: {aliases or 'none'}). Set the champion by hand: "
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
            registry.set_model_version_tag(model_name, demoted, "rolled_back", f"{when}: champion moved back to version {restored}")
    return (
        f"{model_name}: champion moved from version {demoted or '(none)'} back to version {restored}; "
        f"previous_champion is now {older or 'unset'}"
    )


@task(container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"))
def rollback_champion(model_name: str) -> str:
    """Undo the last promotion. Not cached and not retried: each run moves the aliases one step back."""
    return roll_back(model_name)
