"""Container images of the tasks, built by flytekit's ImageSpec on `pyflyte run --remote` / `pyflyte register`.

Local runs (`pyflyte run` without --remote) use the current virtual environment and build nothing.
Set SSLFLOW_IMAGE_REGISTRY to the registry your cluster pulls from (default: the flyte sandbox's).
Both images pin the same packages as pyproject.toml; the GPU image starts from a CUDA runtime.
"""

from __future__ import annotations

import os

from flytekit import ImageSpec

REGISTRY = os.environ.get("SSLFLOW_IMAGE_REGISTRY", "localhost:30000")
PACKAGES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
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
    "matplotlib==3.11.2",
]

cpu_image = ImageSpec(
    name="sslflow-cpu",
    python_version="3.11",
    packages=PACKAGES,
    apt_packages=["dataset-fashion-mnist"],
    registry=REGISTRY,
)

gpu_image = ImageSpec(
    name="sslflow-gpu",
    base_image="nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
    python_version="3.11",
    packages=PACKAGES,
    apt_packages=["dataset-fashion-mnist"],
    registry=REGISTRY,
)
