"""Flyte tasks of the sslflow pipeline: thin typed adapters over ssl_models, I/O and MLflow."""

import sslflow  # noqa: F401  (first: no dependency reports home, sslflow/telemetry.py)
