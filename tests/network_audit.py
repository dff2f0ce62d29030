"""What a process and its children look up and connect to, and whether a dependency left a telemetry store, for tests.

``audited_python_path(folder)`` writes a ``sitecustomize.py`` into ``folder``; a Python process with that folder on
its PYTHONPATH (and every child that inherits it: pyflyte-fast-execute's, torchrun's workers) installs an audit hook
(PEP 578) that appends each ``socket.getaddrinfo`` (a host name looked up) and ``socket.connect`` (an address) event
to ``folder/events/<pid>.jsonl``. ``network_events(folder)`` reads them back. Connections a library opens in C
(ONNX Runtime's telemetry uploader, gloo) raise no audit event: what shows they cannot happen is the telemetry store
they keep (``TELEMETRY_STORES``, under HOME), which ``telemetry_stores(home)`` lists.
"""

from __future__ import annotations

import json
from pathlib import Path

# Where a dependency keeps its device id and its queue of events, under HOME: ONNX Runtime's 1DS store (MLflow's and
# huggingface_hub's telemetry keep none: they send at once, so their host lookups show them).
TELEMETRY_STORES = (".cache/Microsoft",)

_SITECUSTOMIZE = """
import json, os, socket, sys

_events = os.path.join({folder!r}, "events")


def _record(event, args):
    if event == "socket.getaddrinfo":
        entry = {{"event": "lookup", "host": str(args[0]), "port": str(args[1])}}
    elif event == "socket.connect":
        family, address = args[0].family, args[1]
        where = list(address) if isinstance(address, tuple) else str(address)
        entry = {{"event": "connect", "family": socket.AddressFamily(family).name, "address": where}}
    else:
        return
    os.makedirs(_events, exist_ok=True)
    with open(os.path.join(_events, f"{{os.getpid()}}.jsonl"), "a") as log:
        log.write(json.dumps({{**entry, "argv": sys.argv[:2]}}) + "\\n")


sys.addaudithook(_record)
"""


def audited_python_path(folder: Path) -> Path:
    """``folder``, holding the sitecustomize that records network events: put it on a process's PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(folder=str(folder)))
    return folder


def network_events(folder: Path) -> list[dict]:
    """Every event the audited processes recorded: {"event": "lookup", "host", "port"} or {"event": "connect",
    "family", "address"}, each with the first two words of its process's argv."""
    return [
        json.loads(line)
        for path in sorted((folder / "events").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def telemetry_stores(home: Path) -> list[Path]:
    """The telemetry stores a process left under ``home`` (TELEMETRY_STORES that exist)."""
    return [home / store for store in TELEMETRY_STORES if (home / store).exists()]
