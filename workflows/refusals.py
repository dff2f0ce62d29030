"""`pyflyte run` prints a refused input (sslflow.errors.Refusal) as one clean message, not as a crash.

flytekit's CLI prints every exception that ends a run as a rich traceback box (~50 lines) before the
message, so a refusal that names the file and the fix reads like a crash in sslflow. Importing this
module (every workflow module does) wraps flytekit's ``pretty_print_exception``: when the exception,
or one it was raised from, is a Refusal, the message alone is printed on stderr and pyflyte still
exits with status 1. Everything else, and every run with ``-vv`` or more, keeps flytekit's traceback.
"""

from __future__ import annotations

import sys

from flytekit.clis.sdk_in_container import utils as pyflyte_cli

from sslflow.errors import Refusal

_flytekit_pretty_print_exception = pyflyte_cli.pretty_print_exception


def find_refusal(error: BaseException) -> Refusal | None:
    """``error`` or the first exception in its cause/context chain that is a Refusal."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Refusal):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def print_refusal_or_traceback(error: Exception, verbosity: int = 1) -> None:
    refusal = find_refusal(error)
    if refusal is None or verbosity >= 2:
        _flytekit_pretty_print_exception(error, verbosity)
        return
    print(f"Refused ({type(refusal).__name__}): {refusal}", file=sys.stderr)


if getattr(pyflyte_cli.pretty_print_exception, "__name__", "") != print_refusal_or_traceback.__name__:
    pyflyte_cli.pretty_print_exception = print_refusal_or_traceback
