"""No dependency reports home: the switches that turn off each dependency's telemetry, set before it is imported.

- onnxruntime (the registry's ONNX check): its official wheels carry Microsoft's 1DS telemetry, which writes a
  device id and queues events (process path, CPU, OS, container) in ~/.cache/Microsoft/DeveloperTools to upload
  them. ``ORT_DISABLE_TELEMETRY=1`` stops the uploader, the events and the device id for the process; it is read
  when the library loads, so it must be set before ``import onnxruntime`` (onnxruntime's Privacy.md, "Disabling
  Telemetry").
- MLflow: usage events to MLflow's service, started by ``import mlflow``: ``MLFLOW_DISABLE_TELEMETRY``.
- huggingface_hub (timm's weight downloads): library versions in the user agent: ``HF_HUB_DISABLE_TELEMETRY``,
  read by ``import huggingface_hub``.
- Great Expectations: ``GX_ANALYTICS_ENABLED``.
- ``DO_NOT_TRACK`` (https://donottrack.sh), which MLflow and huggingface_hub honour too, for any other.

``TELEMETRY_OFF`` is in the images' environment (images/specs.py) and the Makefile's. Importing ``sslflow`` (first
thing in ``tasks`` and ``workflows``) sets it in this process as well, so a run started any other way (a bare
``pyflyte run``, a pod of another image) reports nothing either. tests/test_telemetry.py checks a whole pipeline's
pods.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "ORT_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "true",
}


def switch_off_telemetry() -> None:
    """Set every variable of ``TELEMETRY_OFF`` in this process's environment (and so its children's), overriding any
    other value: a deployment that needs telemetry off cannot be turned back on by a stray variable."""
    os.environ.update(TELEMETRY_OFF)
