"""sslflow's plain-Python layer: data sources and the dataset format, tracking, registry, reporting.

It sits between the Flyte tasks (``tasks/``, which import it) and the PyTorch engine (``ssl_models/``,
which it imports). It never imports flytekit, and only ``tracking`` and ``registry`` import mlflow,
so every piece runs and tests without a Flyte context. The layer order is a contract checked by
``make test`` (``.importlinter``).
"""

from sslflow.telemetry import switch_off_telemetry

switch_off_telemetry()  # before any dependency is imported: sslflow/telemetry.py
