"""A real moto S3 server process on 127.0.0.1 for tests, and the environment that points boto3 at it.

with moto_s3_server(log_dir) as endpoint:      # waits (bounded) until it answers; always stopped (S3 clients closed
first)
    s3_environment(monkeypatch, endpoint)       # no real AWS profile, credentials or endpoint can leak in
    client = boto3.client("s3")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(server: subprocess.Popen, endpoint: str, log_name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.returncode}; see {log_name}")
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"moto_server did not answer on {endpoint} within {STARTUP_TIMEOUT_S} s; see {log_name}"
                ) from None
            time.sleep(0.2)


@contextmanager
def moto_s3_server(log_dir: Path) -> Iterator[str]:
    """Start moto_server on a free loopback port; yields its endpoint URL; stops it on exit."""
    port = _free_port()
    script = Path(sys.executable).parent / "moto_server"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    with (log_dir / "moto-server.log").open("w") as log:
        server = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_until_serving(server, endpoint, log.name)
            yield endpoint
        finally:
            close_s3_clients()
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def close_s3_clients() -> None:
    """Close the asynchronous S3 clients that flytekit opened through s3fs, each on its own event loop, and
    drop them from s3fs's instance cache.

    s3fs never closes an asynchronous instance's client (fsspec/s3fs#943). Left open until interpreter
    exit, each client's aiohttp session is reported then through flytekit's event-loop exception handler,
    whose rich logging fails with "ImportError: sys.meta_path is None, Python is likely shutting down".
    """
    import asyncio

    from s3fs import S3FileSystem

    for filesystem in list(S3FileSystem._cache.values()):
        client, loop = (
            getattr(filesystem, "_s3", None),
            filesystem.storage_options.get("loop"),
        )  # flytekit passes its loop
        if filesystem.asynchronous and client is not None and loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
    S3FileSystem.clear_instance_cache()


def s3_environment(monkeypatch, endpoint: str) -> None:
    """boto3 at ``endpoint`` with test credentials; no profile, config file or other endpoint of the machine."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
