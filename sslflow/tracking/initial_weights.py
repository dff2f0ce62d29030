"""Initial weights from where the user keeps them: a local file, an S3 object or an MLflow URI; fetched, hashed and
put into the backbone by ssl_models.weights (checked key by key, 3-channel first layers summed to 1 channel).

    "/data/weights/vit_s16_imagenet.pth"            a local file (torch.save state dict or .safetensors)
    "s3://bucket/weights/resnet50.pth"              an S3 object (endpoint and credentials from the environment,
                                                    as for the S3 data sources: sslflow/data/sources/s3.py)
    "models:/chest-encoder/3", "models:/x@champion" a registered MLflow model (an MLflow PyTorch model, or a
    "runs:/<run id>/weights/encoder.pt"             folder with one state-dict file), or a run's artifact

``InitialWeights.sha256`` identifies what was loaded: the file's sha256, or for an MLflow model folder the sha256
of its files' names and sha256s. Source and sha256 go to MLflow (the pretraining stage's params) and, through the
encoder and fine-tuned model artifacts, into the registered version's tags.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
from torch import nn

from ssl_models.encoders import build_encoder
from ssl_models.weights import WeightsMismatch, load_backbone_weights, read_weights_file, tensors_of
from sslflow.errors import Refusal
from sslflow.files import file_sha256

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class InitialWeightsError(Refusal, ValueError):
    """The initial weights cannot be fetched, read, or do not fit the backbone; the message says which and why."""


@dataclass(frozen=True)
class InitialWeights:
    """Where the weights came from (``source``, the URI as given) and what they were (``sha256``)."""

    source: str
    sha256: str

    def params(self) -> dict[str, str]:
        """As MLflow params and registry tags."""
        return {"initial_weights.source": self.source, "initial_weights.sha256": self.sha256}


def encoder_from_weights(
    uri: str, encoder_name: str, in_channels: int, image_size: int, folder: Path
) -> tuple[nn.Module, InitialWeights]:
    """An ``encoder_name`` encoder for (in_channels, image_size, image_size) images holding the weights at ``uri``.

    folder: where S3 and MLflow downloads go (the caller's to clean up). InitialWeightsError naming the URI when the
    weights cannot be fetched or read, or do not fit the backbone (missing, unexpected, misshapen keys named).
    """
    local = fetch_weights(uri, folder)
    sha256 = file_sha256(local) if local.is_file() else _folder_sha256(local)
    try:
        tensors = read_weights_file(local) if local.is_file() else _folder_tensors(local, uri)
        encoder = build_encoder(encoder_name, in_channels, image_size)
        loaded = load_backbone_weights(encoder, tensors, source=f"initial weights {uri}")
    except WeightsMismatch as error:
        raise InitialWeightsError(f"{error} (encoder_name={encoder_name!r})") from error
    except ValueError as error:
        raise InitialWeightsError(f"initial weights {uri}: {error}") from error
    adapted, left_out = "; ".join(loaded.adapted) or "nothing adapted", ", ".join(loaded.ignored[:4])
    log.info(
        "initial weights %s (sha256 %s): %d tensors into %s; %s; %d checkpoint keys left out (%s)",
        uri,
        sha256[:12],
        loaded.loaded,
        encoder_name,
        adapted,
        len(loaded.ignored),
        left_out,
    )
    return encoder, InitialWeights(source=uri, sha256=sha256)


def fetch_weights(uri: str, folder: Path) -> Path:
    """A local path holding the weights at ``uri``: the file itself, or a download into ``folder``."""
    if uri.startswith("s3://"):
        return _from_s3(uri, folder)
    if uri.startswith(MLFLOW_SCHEMES):
        return _from_mlflow(uri, folder)
    path = Path(uri).expanduser()
    if not path.is_file():
        raise InitialWeightsError(
            f"initial weights {uri}: no such file; give a local file, s3://bucket/key, models:/name/version or "
            "runs:/id/path"
        )
    return path


def _from_s3(uri: str, folder: Path) -> Path:
    from sslflow.data.sources.s3 import s3_client, s3_errors

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InitialWeightsError(f"initial weights {uri}: name one object, s3://bucket/key")
    path = folder / Path(key).name
    try:
        with s3_errors(f"downloading initial weights {uri}"):
            s3_client().download_file(bucket, key, str(path))
    except Exception as error:
        raise InitialWeightsError(str(error)) from error
    return path


def _from_mlflow(uri: str, folder: Path) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except Exception as error:  # noqa: BLE001 - mlflow raises many kinds; the URI and the reason are what the user needs
        raise InitialWeightsError(
            f"initial weights {uri}: cannot download from MLflow ({type(error).__name__}: {error})"
        ) from error


def _folder_tensors(folder: Path, uri: str) -> dict:
    """The tensors of an MLflow model folder (MLmodel: loaded with mlflow.pytorch) or of its one weights file."""
    if (folder / "MLmodel").exists():  # an MLflow model
        return tensors_of(mlflow.pytorch.load_model(str(folder), map_location="cpu"), uri)
    files = sorted(path for path in folder.rglob("*") if path.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        raise ValueError(
            f"the folder holds {len(files)} weight files ({', '.join(p.name for p in files[:5])}); point the URI at "
            "one of them"
        )
    return read_weights_file(files[0])


def _folder_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()} {file_sha256(path)}\n".encode())
    return digest.hexdigest()
