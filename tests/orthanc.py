"""A real Orthanc DICOM server with its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) for tests and
benchmarks: started on a free loopback port with a configuration generated in a temporary folder (never the
system service), users with basic-auth passwords, and filled by STOW-RS.

    with orthanc_server(folder, users={"reader": "a-password"}) as archive:   # waits (bounded) until it answers
        archive.store(paths)                                                   # STOW-RS, as a modality would send them
        archive.base_url                                                       # http://127.0.0.1:<port>/dicom-web

MISSING says why Orthanc cannot run here (None when it can): tests skip with it, never pass silently.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

STARTUP_TIMEOUT_S = 30
PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
STOW_BATCH = 50


def _dicomweb_plugin() -> str | None:
    return next(
        (str(path) for folder in PLUGIN_FOLDERS for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*"))), None
    )


MISSING = (
    "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; `make test` installs them where it can)"
    if shutil.which("Orthanc") is None
    else "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    if _dicomweb_plugin() is None
    else None
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Archive:
    base_url: str  # the DICOMweb root, http://127.0.0.1:<port>/dicom-web
    auth: tuple[str, str] | None  # a user's (name, password) for the tests' own requests
    server: subprocess.Popen

    def store(self, paths: Sequence[Path]) -> None:
        """STOW-RS the DICOM files at ``paths``, their bytes unchanged (STOW_BATCH per request); AssertionError naming
        the first file of a batch the archive refused any of."""
        boundary = "sslflow-test-stow-boundary"
        for start in range(0, len(paths), STOW_BATCH):
            parts = [
                b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), Path(path).read_bytes())
                for path in paths[start : start + STOW_BATCH]
            ]
            answer = requests.post(
                f"{self.base_url}/studies",
                data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
                auth=self.auth,
                timeout=120,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
            )
            failed = answer.json().get("00081198", {}).get("Value", []) if answer.content else []
            assert answer.ok and not failed, (
                f"Orthanc refused files stored from {paths[start]} (HTTP {answer.status_code})"
            )

    def uri(self, query: str = "") -> str:
        """The dicomweb+http:// source URI of ``query`` on this archive."""
        return f"dicomweb+{self.base_url}" + (f"?{query}" if query else "")


def _configuration(folder: Path, port: int, users: dict[str, str]) -> dict:
    return {
        "Name": "sslflow-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users,
        "HttpServerEnabled": True,
        "StorageCompression": False,
        "HttpThreadsCount": 8,
        "Plugins": [_dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "ConcurrentJobs": 1,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
    }


def _wait_until_serving(server: subprocess.Popen, base_url: str, auth, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            requests.get(f"{base_url}/studies", auth=auth, timeout=1).raise_for_status()
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Orthanc did not answer on {base_url} within {STARTUP_TIMEOUT_S} s; see {log}"
                ) from None
            time.sleep(0.2)


@contextmanager
def orthanc_server(folder: Path, *, users: dict[str, str] | None = None) -> Iterator[Archive]:
    """Orthanc on a free loopback port with its storage in ``folder`` (module docstring); stopped on exit."""
    assert MISSING is None, MISSING
    folder.mkdir(parents=True, exist_ok=True)
    port, users = free_port(), users or {}
    (folder / "orthanc.json").write_text(json.dumps(_configuration(folder, port, users)))
    auth = next(iter(users.items()), None)
    with (folder / "orthanc.log").open("w") as log:
        server = subprocess.Popen(
            ["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=folder
        )
        archive = Archive(f"http://127.0.0.1:{port}/dicom-web", auth, server)
        try:
            _wait_until_serving(server, archive.base_url, auth, folder / "orthanc.log")
            yield archive
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
