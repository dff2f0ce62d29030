"""Local files are read only when they are regular files: a FIFO, socket or device is refused after an ``os.stat``.

What the folder and parquet-list sources (sslflow/data/sources/) and the fingerprint's digest cache
(sslflow/data/fingerprint.py) check before they open a local file, so a special file can neither
block ingest nor feed it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sslflow.data.types import SourceError


def file_kind(mode: int) -> str:
    """What an ``st_mode`` describes, for messages: "a regular file", "a FIFO (named pipe)", ..."""
    kinds = [
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def check_regular_file(status: os.stat_result, where: str, name: str) -> os.stat_result:
    """``status`` (an os.stat / os.fstat result) if it is a regular file's, else SourceError naming the file."""
    if not stat.S_ISREG(status.st_mode):
        raise SourceError(
            f"{where}: {name!r} is not a regular file but {file_kind(status.st_mode)}; "
            "sources are read from regular files only: replace it with the file itself"
        )
    return status


def stat_regular_file(path: str | Path, where: str, name: str, *, missing: str) -> os.stat_result:
    """``os.stat(path)`` (following symlinks, never opening the file); SourceError unless it is a regular file.

    where, name: the file as the message names it ("<where>: '<name>' ..."); missing: the end of the
    message when there is no such file (e.g. "does not exist in /data/scans").
    """
    try:
        status = os.stat(path)
    except FileNotFoundError as error:
        raise SourceError(f"{where}: {name!r} {missing}") from error
    except OSError as error:
        raise SourceError(f"{where}: {name!r} cannot be examined ({error.strerror}); check its permissions") from error
    return check_regular_file(status, where, name)
