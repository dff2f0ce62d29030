"""Data in: source readers, decoding, the dataset manifest and folder format, validation.

Bottom to top: ``types`` (errors, SourceImages) -> ``decode`` -> ``decode_cache`` -> ``metadata`` ->
``listing``, ``regular_files`` -> ``fingerprint`` (the cache key's encoding and digest cache) -> ``sources``
(the ``Source`` protocol and ``open_source``, the one dispatcher; one module per kind: ``sources.builtin``,
``sources.folder``, ``sources.parquet_list``, ``sources.s3``) -> ``chunks`` (plan, decode, join). Beside them:
``manifest`` (the dataset table), ``dataset`` (its folder format), ``labels`` and ``validation``
(the great-expectations suite).
"""
