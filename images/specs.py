"""Container images of the tasks, built by flytekit's ImageSpec on `pyflyte run --remote` / `pyflyte register`.

Local runs (`pyflyte run` without --remote) use the current virtual environment and build nothing.
Set SSLFLOW_IMAGE_REGISTRY to the registry your cluster pulls from (default: the flyte sandbox's).
Both images install the whole of requirements.lock (every package at its locked version). The torch
wheels bring their own CUDA 13 libraries (the nvidia-* packages of the lock), so the GPU image only
needs a CUDA 13 base for the driver hooks.

Images built elsewhere (CI, `docker build`): set SSLFLOW_CPU_IMAGE and SSLFLOW_GPU_IMAGE to their full
names (registry/name:tag). Tasks then name those images and flytekit builds or looks up nothing;
that is also how the packaging test serializes the workflows on a machine without docker.
"""

from __future__ import annotations

import os
from pathlib import Path

from flytekit import ImageSpec

from sslflow.telemetry import TELEMETRY_OFF

REGISTRY = os.environ.get("SSLFLOW_IMAGE_REGISTRY", "localhost:30000")
# Every package of the lock file at its locked version, dependencies included: the pods run what the tests ran.
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"

# A pod's disk ends with the pod: the per-file ingest caches could never hit there (sslflow/data/decode_cache.py).
# No dependency reports home from a pod (sslflow/telemetry.py).
POD_ENVIRONMENT = {"SSLFLOW_INGEST_CACHE": "off", **TELEMETRY_OFF}

cpu_image_spec = ImageSpec(
    name="sslflow-cpu",
    python_version="3.11",
    requirements=str(LOCK_FILE),
    apt_packages=["dataset-fashion-mnist"],
    env=POD_ENVIRONMENT,
    registry=REGISTRY,
)

gpu_image_spec = ImageSpec(
    name="sslflow-gpu",
    base_image="nvidia/cuda:13.0.1-base-ubuntu24.04",
    python_version="3.11",
    requirements=str(LOCK_FILE),
    apt_packages=["dataset-fashion-mnist"],
    env=POD_ENVIRONMENT,
    registry=REGISTRY,
)

# What the tasks name: a pre-built image if one is given, else the spec (built on registration).
cpu_image: str | ImageSpec = os.environ.get("SSLFLOW_CPU_IMAGE") or cpu_image_spec
gpu_image: str | ImageSpec = os.environ.get("SSLFLOW_GPU_IMAGE") or gpu_image_spec
