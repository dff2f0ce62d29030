import sslflow  # noqa: F401  (first: no dependency reports home, sslflow/telemetry.py)
