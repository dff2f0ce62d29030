"""register: log the best fine-tuned model to the MLflow registry as ``challenger``; promote to ``champion`` if better.

"Best" is chosen on the validation split (never on test). The challenger takes ``champion`` when
there is no champion yet or when its in-domain test accuracy beats the champion's by more than
RegistryConfig.min_improvement. Aliases, not the deprecated stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from flytekit import Cache, Resources, task
from mlflow.exceptions import MlflowException

from images.specs import cpu_image
from tasks.artifacts import FinetunedModel
from tasks.config import RegistryConfig
from tasks.evaluate import load_classifier
from tasks.tracking import client, stage_run

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "mlflow==3.17.2"]


@dataclass
class Registration:
    model_name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    init: str = ""
    label_fraction: float = 0.0
    in_domain_accuracy: float = 0.0
    shift_accuracy: float = 0.0
    decision: str = ""


def _accuracy(results: pd.DataFrame, model: FinetunedModel, eval_set: str) -> float:
    row = results[(results["init"] == model.init) & (results["label_fraction"] == model.label_fraction) & (results["eval_set"] == eval_set)]
    return float(row["accuracy"].iloc[0])


def _champion_accuracy(model_name: str) -> float | None:
    try:
        version = client().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return float(version.tags.get("in_domain_accuracy", "nan"))


@task(cache=Cache(version="1", ignored_inputs=("parent_run_id",)), container_image=cpu_image, requests=Resources(cpu="1", mem="4Gi"), retries=2)
def register(models: list[FinetunedModel], results: pd.DataFrame, config: RegistryConfig, parent_run_id: str) -> Registration:
    best = max(models, key=lambda model: (model.val_accuracy, model.init == "ssl", model.label_fraction))
    in_domain, shift = _accuracy(results, best, "in_domain"), _accuracy(results, best, "shift")
    with stage_run(parent_run_id, "register", {"config": config, "selected.init": best.init, "selected.label_fraction": best.label_fraction}) as run:
        classifier = load_classifier(best)
        example = np.zeros((2, best.in_channels, best.image_size, best.image_size), dtype=np.float32)
        logged = mlflow.pytorch.log_model(classifier, name="model", input_example=example, pip_requirements=MODEL_PIP_REQUIREMENTS)
        version = mlflow.register_model(logged.model_uri, config.model_name)
        tags = {
            "in_domain_accuracy": f"{in_domain:.6f}", "shift_accuracy": f"{shift:.6f}", "init": best.init,
            "label_fraction": f"{best.label_fraction:g}", "val_accuracy": f"{best.val_accuracy:.6f}",
            "class_names": ",".join(best.class_names), "checkpoint_sha256": best.content_sha256,
            "pipeline_run_id": parent_run_id,
        }  # fmt: skip
        registry = client()
        for key, value in tags.items():
            registry.set_model_version_tag(config.model_name, version.version, key, value)
        registry.set_registered_model_alias(config.model_name, CHALLENGER, version.version)
        champion_accuracy = _champion_accuracy(config.model_name)
        aliases = [CHALLENGER]
        if champion_accuracy is None or in_domain > champion_accuracy + config.min_improvement:
            registry.set_registered_model_alias(config.model_name, CHAMPION, version.version)
            aliases.append(CHAMPION)
            decision = "promoted: no champion yet" if champion_accuracy is None else f"promoted: {in_domain:.4f} > champion {champion_accuracy:.4f}"
        else:
            decision = f"kept champion: {in_domain:.4f} does not beat champion {champion_accuracy:.4f} by > {config.min_improvement}"
        mlflow.set_tag("registry.decision", decision)
        mlflow.log_metrics({"in_domain_accuracy": in_domain, "shift_accuracy": shift})
    return Registration(
        model_name=config.model_name, version=str(version.version), aliases=aliases, init=best.init,
        label_fraction=best.label_fraction, in_domain_accuracy=in_domain, shift_accuracy=shift, decision=decision,
    )  # fmt: skip
