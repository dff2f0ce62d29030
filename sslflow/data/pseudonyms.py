"""Keyed pseudonyms for identifying values (DICOM patient, study, series, instance and site; file paths): HMAC-SHA256.

The same value gets the same pseudonym under the same key, on every run and machine; without the key
a pseudonym cannot be turned back into the value, nor recomputed from a guessed value. Where the key
comes from, first found wins:
1. the key given by the caller (tasks/ingest.py passes the Flyte Secret ``sslflow/pseudonym_key`` on a
   cluster; locally flytekit also reads it from ``$SSLFLOW_PSEUDONYM_KEY``);
2. the environment variable ``SSLFLOW_PSEUDONYM_KEY`` (KEY_ENV);
3. the key file ``$SSLFLOW_PSEUDONYM_KEY_FILE``, else ``~/.config/sslflow/pseudonym.key``: created on
   first use with 32 random bytes (hex), mode 0600, and read afterwards.
The key is never logged, written anywhere else or put in a message; ``key_id`` (an HMAC of a constant)
names it in cache keys without revealing it. The key is resolved only when a DICOM file is read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sslflow.data.types import SourceError

KEY_ENV = "SSLFLOW_PSEUDONYM_KEY"
KEY_FILE_ENV = "SSLFLOW_PSEUDONYM_KEY_FILE"
MIN_KEY_CHARACTERS = 16
PSEUDONYM_HEX_CHARACTERS = 20  # 80 bits: no collision among 10^9 patients in practice


def default_key_file() -> Path:
    return (
        Path(os.environ[KEY_FILE_ENV])
        if os.environ.get(KEY_FILE_ENV)
        else Path.home() / ".config" / "sslflow" / "pseudonym.key"
    )


def _read_or_create_key_file(path: Path) -> str:
    """The key in ``path``; a new random key is written there (0600, never replacing one) when it is missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def resolve_key(given: str | None = None) -> bytes:
    """The pseudonymisation key (module docstring); SourceError when the one found is too short."""
    if given:
        key, origin = given.strip(), "the pseudonym key given to ingest (Flyte Secret sslflow/pseudonym_key)"
    elif os.environ.get(KEY_ENV):
        key, origin = os.environ[KEY_ENV].strip(), f"${KEY_ENV}"
    else:
        path = default_key_file()
        try:
            key, origin = _read_or_create_key_file(path), f"the key file {path}"
        except OSError as error:
            raise SourceError(
                f"the pseudonym key file {path} cannot be read or created ({error.strerror}); set {KEY_ENV} instead"
            ) from error
    if len(key) < MIN_KEY_CHARACTERS:
        raise SourceError(
            f"{origin} is shorter than {MIN_KEY_CHARACTERS} characters; use a long random key (e.g. `openssl rand -hex "
            "32`)"
        )
    return key.encode("utf-8")


class Pseudonyms:
    """Turns identifying values into pseudonyms ``<kind>-<20 hex>``; resolves its key on first use."""

    def __init__(self, key: str | None = None):
        self._given = key
        self._key: bytes | None = None

    def _secret(self) -> bytes:
        if self._key is None:
            self._key = resolve_key(self._given)
        return self._key

    def key_id(self) -> str:
        """Names the key (for cache keys) without revealing it."""
        return hmac.new(self._secret(), b"sslflow key id", hashlib.sha256).hexdigest()[:16]

    def pseudonym(self, kind: str, value: str) -> str:
        """``kind``-HMAC(key, kind NUL value): the same value of another kind gets another pseudonym."""
        digest = hmac.new(
            self._secret(), f"{kind}\0{value}".encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()
        return f"{kind}-{digest[:PSEUDONYM_HEX_CHARACTERS]}"
