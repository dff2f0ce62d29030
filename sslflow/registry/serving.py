"""What the registry serves, and how a served model is scored on the gate sets (the promotion gate's images).

``RegisteredClassifier``: float32 images (B, C, H, W) with pixel values 0-255 in; class probabilities
(B, num_classes) out, columns in the order of the version's ``class_names`` tag. MLflow saves it with
torch.export (its default "pt2" format), so loading needs torch and mlflow, not this project's code.
The version also carries the same model as ONNX (``ONNX_ARTIFACT``, input ``images``, output
``probabilities``, any batch size) for ONNX Runtime or Triton: docs/serving.md.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from ssl_models.augment import AugmentConfig, normalise
from ssl_models.evaluate import accuracy
from sslflow.data.labels import class_indices
from sslflow.registry.gate import Accuracies

MODEL_PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "mlflow==3.17.2"]
SERVING_TAG, SERVING_FORMAT = "sslflow.serving", "float32 pixels 0-255 in, probabilities out"

ONNX_FILE = "model.onnx"
ONNX_ARTIFACT = (
    f"extra_files/{ONNX_FILE}"  # its path inside the registered version (mlflow.pytorch.log_model extra_files)
)
ONNX_TOLERANCE = 1e-4  # largest difference in any probability between the ONNX and the PyTorch model

CLASS_NAMES_TAG = "class_names"  # a JSON list: class names may hold commas

GateSets = dict[
    str, tuple[np.ndarray, np.ndarray]
]  # "in_domain" / "shift" -> gate split (images (N, C, H, W) uint8, label names (N,))


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


def export_onnx(model: RegisteredClassifier, images: np.ndarray, path: Path) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as ONNX and check it against PyTorch on ``images``.

    images: (N, C, H, W) uint8 or float32 pixel values 0-255, real ones (the gate images): the export fixes
    C, H and W to theirs; the batch size stays free. RuntimeError if ONNX Runtime's probabilities differ
    from PyTorch's by more than ONNX_TOLERANCE on any of them.
    """
    example = torch.from_numpy(np.ascontiguousarray(images[:64], dtype=np.float32))
    with warnings.catch_warnings():
        # The TorchScript exporter: 0.5 s here against 2.4 s for the torch.export one, which also needs onnxscript.
        # It warns that it is deprecated, and that normalise's size check (augment.py) is traced as a constant:
        # C, H and W are fixed, as the docstring says.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["probabilities"],
            dynamo=False,
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": example.numpy()})[0]
    with torch.no_grad():
        difference = float(np.abs(exported - model(example).numpy()).max())
    if not difference <= ONNX_TOLERANCE:
        raise RuntimeError(
            f"the ONNX export of the classifier differs from PyTorch by {difference:.2e} (> {ONNX_TOLERANCE}) on the "
            "gate images"
        )
    return path


@torch.no_grad()
def score(model: nn.Module, class_names: list[str], gate_sets: GateSets) -> Accuracies:
    """Accuracy of a RegisteredClassifier (in eval mode) on each gate set. ValueError if a gate label is not one of
    class_names."""
    accuracies = {}
    for eval_set, (images, label_names) in gate_sets.items():
        labels = class_indices(label_names, class_names, f"{eval_set} gate split")
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
