"""The registered model's name: one per domain source unless RegistryConfig.model_name names one.

A model is only ever gated against a champion of the same name, so unrelated data never compete:
    mnist-5k (the demo)           -> sslflow-mnist-5k
    /data/scans (a folder)        -> sslflow-scans-<8 hex of the folder's absolute path>
    s3://bucket/ct/2024           -> sslflow-bucket-ct-2024-<8 hex of the URI>
Built-in sources need no digest; a folder, parquet list or S3 prefix gets one, so two folders that
share a name (site-a/images, site-b/images) are two models. The name depends on where the data is,
not on its content: a folder that gains images keeps its model, and its champion.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sslflow.data.sources import source_kind, source_name

PREFIX = "sslflow"


def _location(source: str) -> str:
    """The source as one string per place: the absolute path of a folder or parquet list, the S3 URI without a final
    /."""
    kind = source_kind(source)
    return source.rstrip("/") if kind == "s3" else str(Path(source).resolve())


def default_model_name(domain_source: str) -> str:
    """The registered model name of a pipeline whose domain data is ``domain_source`` (see the module docstring)."""
    if source_kind(domain_source) == "builtin":
        return f"{PREFIX}-{source_name(domain_source)}"
    digest = hashlib.sha256(_location(domain_source).encode()).hexdigest()[:8]
    return f"{PREFIX}-{source_name(domain_source)}-{digest}"
