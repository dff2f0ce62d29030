"""Flyte tasks of the sslflow pipeline: thin typed adapters over ssl_models, I/O and MLflow."""
