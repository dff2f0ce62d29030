"""The base classes of what stops a run: the bottom of the library (imports nothing).

A ``Refusal`` is the user's to fix (a file, a row, a setting) and its message says what and where;
`pyflyte run` prints it as one clean line (workflows/refusals.py), not as a crash with a traceback.
A ``ServiceUnavailable`` is an outage (a tracking server, object store or archive that does not answer):
when the run starts it is refused naming the service (sslflow/services.py); later in a run a task fails
as recoverable and Flyte retries it (tasks/shared.py). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import unicodedata

# bidirectional embeddings, overrides and isolates: they reorder the text a terminal shows after them
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character (C0, DEL, C1; newlines kept when keep_newlines) and bidirectional
    control written as its Python escape (ESC as \\x1b, U+202E as \\u202e): a file name holding a terminal escape
    sequence prints as text and never recolours or rewrites the terminal or a CI log."""
    return "".join(
        repr(char)[1:-1]
        if (unicodedata.category(char) == "Cc" and not (keep_newlines and char == "\n")) or char in _BIDI_CONTROLS
        else char
        for char in text
    )


class Refusal(Exception):
    """An input sslflow refuses; the message names the file, row, field or setting and the problem, and says what to
    do. Names in it are printed safely: control characters are escaped (``printable``)."""

    def __init__(self, message: str = "", *args):
        super().__init__(printable(str(message), keep_newlines=True), *args)


class ServiceUnavailable(RuntimeError):
    """A service the run needs did not answer. service: what it is ("MLflow tracking server"); uri: where, without
    credentials; the message says what to check."""

    def __init__(
        self, message: str, *, service: str = "", uri: str = ""
    ):  # defaults: unpickled, attributes come back after
        super().__init__(printable(message))
        self.service, self.uri = service, printable(uri)
