"""What the registry serves, and how a served model is scored on test sets.

``RegisteredClassifier``: float32 images (B, C, H, W) with pixel values 0-255 in; class probabilities
(B, num_classes) out, columns in the order of the version's ``class_names`` tag. MLflow saves it with
torch.export (its default "pt2" format), so loading needs torch and mlflow, not this project's code.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from ssl_models.augment import AugmentConfig, normalise
from ssl_models.evaluate import accuracy
from sslflow.data.labels import class_indices
from sslflow.registry.gate import Accuracies

MODEL_PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "mlflow==3.17.2"]
SERVING_TAG, SERVING_FORMAT = "sslflow.serving", "float32 pixels 0-255 in, probabilities out"

CLASS_NAMES_TAG = "class_names"  # a JSON list: class names may hold commas

TestSets = dict[str, tuple[np.ndarray, np.ndarray]]  # eval set -> (images (N, C, H, W) uint8, label names (N,))


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


@torch.no_grad()
def score(model: nn.Module, class_names: list[str], test_sets: TestSets) -> Accuracies:
    """Accuracy of a RegisteredClassifier (in eval mode) on each test set. ValueError if a test label is not one of class_names."""
    accuracies = {}
    for eval_set, (images, label_names) in test_sets.items():
        labels = class_indices(label_names, class_names, f"{eval_set} test split")
        batches = [model(torch.from_numpy(images[start : start + 512]).float()) for start in range(0, len(images), 512)]
        accuracies[eval_set] = accuracy(torch.cat(batches).numpy(), labels)
    return Accuracies(in_domain=accuracies["in_domain"], shift=accuracies["shift"])


def encode_class_names(class_names: list[str]) -> str:
    return json.dumps(list(class_names))


def decode_class_names(tag: str) -> list[str]:
    """The class names of a version's tag: a JSON list, or the comma-joined form of versions registered before."""
    try:
        names = json.loads(tag)
    except json.JSONDecodeError:
        return tag.split(",")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"tag {CLASS_NAMES_TAG}={tag!r} is not a JSON list of class names")
    return names
