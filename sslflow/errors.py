"""The one base class of every input problem sslflow refuses: the bottom of the library (imports nothing).

A ``Refusal`` is the user's to fix (a file, a row, a setting) and its message says what and where;
`pyflyte run` prints it as one clean line (workflows/refusals.py), not as a crash with a traceback.
Anything else that goes wrong is a bug or an outage and keeps its traceback.
"""

from __future__ import annotations


class Refusal(Exception):
    """An input sslflow refuses; the message names the file, row, field or setting and the problem."""
