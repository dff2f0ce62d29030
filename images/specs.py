"""Container images of the tasks, built by flytekit's ImageSpec on `pyflyte run --remote` / `pyflyte register`.

Local runs (`pyflyte run` without --remote) use the current virtual environment and build nothing.
Set SSLFLOW_IMAGE_REGISTRY to the registry your cluster pulls from (default: the flyte sandbox's).
Both images pin the versions of requirements.lock (tests/test_packaging.py checks it). The torch
wheels bring their own CUDA 13 libraries (the nvidia-* packages of the lock), so the GPU image only
needs a CUDA 13 base for the driver hooks.

Images built elsewhere (CI, `docker build`): set SSLFLOW_CPU_IMAGE and SSLFLOW_GPU_IMAGE to their full
names (registry/name:tag). Tasks then name those images and flytekit builds or looks up nothing;
that is also how the packaging test serializes the workflows on a machine without docker.
"""

from __future__ import annotations

import os

from flytekit import ImageSpec

from sslflow.telemetry import TELEMETRY_OFF

REGISTRY = os.environ.get("SSLFLOW_IMAGE_REGISTRY", "localhost:30000")
PACKAGES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    "numpy==2.4.6",
    "flytekit==1.16.31",
    "flytekitplugins-kfpytorch[elastic]==1.16.31",
    "mlflow==3.17.2",
    "great-expectations==1.24.1",
    "mlxtend==0.25.0",
    "scikit-learn==1.9.1",
    "pandas==3.1.1",
    "pyarrow==25.0.1",
    "boto3==1.43.117",
    "pillow==13.0.0",
    "pydicom==3.0.2",
    "dicomweb-client==0.61.2",
    "pylibjpeg==2.1.0",
    "pylibjpeg-libjpeg==2.5.0",
    "pylibjpeg-openjpeg==2.6.0",
    "matplotlib==3.11.2",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "umap-learn==0.5.12",
]

# A pod's disk ends with the pod: the per-file ingest caches could never hit there (sslflow/data/decode_cache.py).
# No dependency reports home from a pod (sslflow/telemetry.py).
POD_ENVIRONMENT = {"SSLFLOW_INGEST_CACHE": "off", **TELEMETRY_OFF}

cpu_image_spec = ImageSpec(
    name="sslflow-cpu",
    python_version="3.11",
    packages=PACKAGES,
    apt_packages=["dataset-fashion-mnist"],
    env=POD_ENVIRONMENT,
    registry=REGISTRY,
)

gpu_image_spec = ImageSpec(
    name="sslflow-gpu",
    base_image="nvidia/cuda:13.0.1-base-ubuntu24.04",
    python_version="3.11",
    packages=PACKAGES,
    apt_packages=["dataset-fashion-mnist"],
    env=POD_ENVIRONMENT,
    registry=REGISTRY,
)

# What the tasks name: a pre-built image if one is given, else the spec (built on registration).
cpu_image: str | ImageSpec = os.environ.get("SSLFLOW_CPU_IMAGE") or cpu_image_spec
gpu_image: str | ImageSpec = os.environ.get("SSLFLOW_GPU_IMAGE") or gpu_image_spec
