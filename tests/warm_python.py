"""Start Python programs as forks of a warm interpreter, for tests: each gets what a fresh process gets, but not the
import time of the heavy third-party libraries.

A pod's process spends most of its CPU importing PyTorch, torch._dynamo, MLflow and pandas (4-8 s a process here); the
pod tests start about a hundred such processes. ``WarmPython`` starts one server process that imports those libraries
(``PRELOADED``: third-party only, never this project's modules or flytekit, which read their configuration from the
environment) and forks it for each program. The forked child then becomes what ``exec`` of the program would be:

- the program's argv, working directory and whole environment (nothing of the server's is left);
- the program's standard input, output and error (the descriptors the caller passes);
- ``sys.path`` as a fresh interpreter builds it: the script's folder, PYTHONPATH's folders, then the site folders;
  a ``sitecustomize`` on PYTHONPATH is imported, as Python's startup does;
- the script run as ``__main__`` (``runpy``), and the interpreter's own exit (non-daemon threads joined, atexit
  handlers run); its exit status, or the signal that ended it, as ``subprocess`` reports it.

What differs from an exec: the preloaded libraries were imported under the server's environment (the pods' common
variables, ``server_environment``), and a child's children see a forked parent. ``shim_folder`` holds a
``pyflyte-execute`` that a pod finds first on its PATH: pyflyte-fast-execute's own child (the task's process) starts
warm too. ``SSLFLOW_TEST_COLD_PODS=1`` runs every pod as a fresh process instead (tests/pod_harness.py).

Protocol (a Unix socket): the client sends a JSON request {"argv", "env", "cwd"} with its three descriptors; the
server answers "<pid>\\n" when it forked, then "<returncode>\\n" when the child ended.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# What a pod imports that costs most: about 8 s of CPU here for torch, torch._dynamo and mlflow (/usr/bin/time).
PRELOADED = ("torch", "torch._dynamo", "torchvision", "mlflow", "pandas", "pyarrow", "sklearn", "PIL.Image", "boto3")
_REQUEST_LIMIT = 1 << 22
BIN = Path(sys.executable).parent


def server_environment(extra: dict[str, str]) -> dict[str, str]:
    """The server's environment: a bare interpreter's PATH and locale and ``extra`` (what every pod has in common)."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", **extra}


class WarmPythonUnavailable(RuntimeError):
    """The server cannot run here (no ``os.pidfd_open``): start programs by exec instead."""


class WarmPython:
    """A warm interpreter server (started on first use, stopped with this process) and its client."""

    def __init__(self, folder: Path, environment: dict[str, str], preloaded: tuple[str, ...] = PRELOADED):
        self.folder, self.environment, self.preloaded = folder, environment, preloaded
        self.socket_path = folder / "server.sock"
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path, output: Path, timeout: float) -> int:
        """Run the script ``argv[0]`` (a Python console script) with ``argv``, ``env`` and ``cwd``, its output and
        error into ``output``; its return code as ``subprocess.run`` gives it (-N: ended by signal N)."""
        self.start()
        with open(output, "wb") as log, open(os.devnull, "rb") as nothing:
            descriptors = (nothing.fileno(), log.fileno(), log.fileno())
            return run_in_server(str(self.socket_path), argv, env, str(cwd), descriptors, timeout)

    def shim_folder(self, real: Path = BIN / "pyflyte-execute") -> Path:
        """A folder with a script named as ``real`` that runs ``real`` through this server: put it first on PATH."""
        self.start()
        shim = self.folder / "shim" / real.name
        if not shim.exists():
            shim.parent.mkdir(parents=True, exist_ok=True)
            shim.write_text(
                _SHIM.format(python=sys.executable, client=__file__, socket=str(self.socket_path), real=str(real))
            )
            shim.chmod(0o755)
        return shim.parent

    def start(self) -> None:
        """Start the server unless it runs (``run`` and ``shim_folder`` start it); WarmPythonUnavailable where it
        cannot run."""
        with self._lock:
            if self._server is not None and self._server.poll() is None:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
            self._server = subprocess.Popen(
                [sys.executable, __file__, str(self.socket_path), *self.preloaded],
                env=self.environment,
                cwd=self.folder,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            ready = self._server.stdout.readline()
            if ready != b"ready\n":
                raise WarmPythonUnavailable(f"the warm Python server did not start: {ready.decode().strip()!r}")
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the server (its stdin closes: it exits); children still running carry on."""
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            self._server.wait(timeout=30)


def run_in_server(
    socket_path: str, argv, env, cwd, descriptors, timeout: float | None, *, forward_sigterm=False
) -> int:
    """The client's side of one request; on ``timeout`` the child is killed and TimeoutExpired raised.
    ``forward_sigterm``: a SIGTERM to this process is passed on to the child (what pyflyte-fast-execute does)."""
    request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(socket_path)
        socket.send_fds(connection, [request], list(descriptors))
        connection.shutdown(socket.SHUT_WR)
        replies = connection.makefile("rb")
        pid = int(replies.readline())
        if forward_sigterm:
            signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))
        connection.settimeout(timeout)
        try:
            return int(replies.readline())
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(argv, timeout) from None


def _serve(socket_path: str) -> dict:
    """The server's loop: fork a child per request, tell each client its child's pid and return code. Returns only in
    a forked child, with that child's request."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen(64)
    waiting = selectors.DefaultSelector()
    waiting.register(listener, selectors.EVENT_READ, "request")
    waiting.register(sys.stdin, selectors.EVENT_READ, "stdin")
    try:  # how the server learns that a child ended (Linux 5.3 and later)
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as error:
        sys.stdout.write(f"no pidfd_open: {error}\n")
        sys.stdout.flush()
        sys.exit(1)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in waiting.select():
            if key.data == "stdin":
                if not sys.stdin.buffer.read1(1):  # the client's process is gone
                    os.unlink(socket_path)
                    sys.exit(0)
            elif key.data == "request":
                connection, _ = listener.accept()
                body, descriptors, _, _ = socket.recv_fds(connection, _REQUEST_LIMIT, 3)
                body += _rest_of(connection)
                pid = os.fork()
                if pid == 0:
                    for other in list(waiting.get_map().values()):  # the listener, stdin, other children's pidfds
                        if isinstance(other.fileobj, socket.socket):
                            other.fileobj.close()
                        elif isinstance(other.fileobj, int):
                            os.close(other.fileobj)
                    waiting.close()
                    connection.close()
                    return {**json.loads(body), "descriptors": descriptors}
                for descriptor in descriptors:
                    os.close(descriptor)
                connection.sendall(f"{pid}\n".encode())
                waiting.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, connection))
            else:
                pid, connection = key.data
                waiting.unregister(key.fileobj)
                os.close(key.fileobj)
                _, status = os.waitpid(pid, 0)
                try:
                    connection.sendall(f"{_returncode(status)}\n".encode())
                except OSError:  # the client gave up (a timeout) and killed the child
                    pass
                connection.close()


def _rest_of(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _returncode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _become(request: dict) -> None:
    """Turn this forked child into the requested program's process, short of running it."""
    for target, descriptor in enumerate(request["descriptors"]):
        os.dup2(descriptor, target)
        os.close(descriptor)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # recomputed from the child's TMPDIR
    script = request["argv"][0]
    python_path = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = [os.path.dirname(script), *python_path, *sys.path[1:]]
    sys.argv = list(request["argv"])
    if any(os.path.exists(os.path.join(entry, "sitecustomize.py")) for entry in python_path):
        sys.modules.pop("sitecustomize", None)
        __import__("sitecustomize")


_SHIM = """#!{python} -S
# pyflyte-execute started through the warm Python server of the test that wrote this file (tests/warm_python.py).
import importlib.util, os, sys

spec = importlib.util.spec_from_file_location("warm_python", {client!r})
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)
sys.exit(client.exit_status(client.run_in_server({socket!r}, [{real!r}, *sys.argv[1:]], dict(os.environ), os.getcwd(),
                                                   (0, 1, 2), None, forward_sigterm=True)))
"""


def exit_status(returncode: int) -> int:
    """The shim's exit status for its child's return code: a child ended by a signal ends the shim by that signal."""
    if returncode < 0:
        os.kill(os.getpid(), -returncode)
    return returncode


def _run_as_main(script: str) -> int:
    """Run ``script`` as ``__main__``, then end as the interpreter ends a program (non-daemon threads joined, atexit
    handlers run, standard streams flushed) but without tearing the modules down: in a fork, that teardown touches
    every page the server's imports shared and cost 1-3 s a child here. Returns the exit status."""
    import runpy
    import traceback

    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as exit_:
        status = _exit_code(exit_.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return status


def _exit_code(code) -> int:
    """The exit status Python gives ``sys.exit(code)``: None is 0, an int itself, anything else printed and 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    for name in sys.argv[2:]:
        __import__(name)
    gc.freeze()  # what the server imported stays out of the children's collections (no copy-on-write of it)
    _become(_serve(sys.argv[1]))  # _serve returns in a forked child only: from here on, this process is the program
    os._exit(_run_as_main(sys.argv[0]))
