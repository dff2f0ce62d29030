"""The registered model's name: one per domain source unless RegistryConfig.model_name names one.

A model is only ever gated against a champion of the same name, so unrelated data never compete:
    mnist-5k (the demo)           -> sslflow-mnist-5k
    /data/scans (a folder)        -> sslflow-scans-<8 hex of the folder's absolute path>
    s3://bucket/ct/2024           -> sslflow-bucket-ct-2024-<8 hex of the URI>
The source names itself (``Source.display_name``, sslflow/data/sources/): built-in sources need no digest; a folder,
parquet list, S3 prefix or archive query gets one, so two folders that share a name (site-a/images, site-b/images) are
two models. The name depends on where the data is, not on its content: a folder that gains images keeps its model, and
its champion.
"""

from __future__ import annotations

from sslflow.data.sources import source_display_name

PREFIX = "sslflow"


def default_model_name(domain_source: str) -> str:
    """The registered model name of a pipeline whose domain data is ``domain_source`` (see the module docstring)."""
    return f"{PREFIX}-{source_display_name(domain_source)}"
