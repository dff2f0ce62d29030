"""Data in: source readers, decoding, the dataset manifest and folder format, validation.

Bottom to top: ``types`` (errors, SourceImages) -> ``decode`` -> ``decode_cache`` -> ``metadata`` ->
``listing`` -> one module per source (``builtin``, ``folder``, ``parquet_list``, ``s3``) ->
``fingerprint`` (what a source's cache key covers) -> ``sources`` (the dispatcher). Beside them:
``manifest`` (the dataset table), ``dataset`` (its folder format), ``labels`` and ``validation``
(the great-expectations suite).
"""
