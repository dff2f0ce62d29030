"""The warm interpreter the pod tests fork their pods from (tests/warm_python.py): a program started from it sees what
it would see started by exec (argv, working directory, environment, sys.path, its sitecustomize, ``__main__``), ends
the same way (exit status, signal, non-daemon threads joined, atexit handlers run), and so does a program it starts
through the shim; a program past its time is killed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from warm_python import WarmPython, WarmPythonUnavailable, server_environment

REPORT = """
import atexit, json, os, sys, tempfile, threading, time
import torch

def _late_write():
    time.sleep(0.3)
    open(os.path.join(os.environ["OUT"], "thread"), "w").write("joined")

threading.Thread(target=_late_write).start()
atexit.register(lambda: open(os.path.join(os.environ["OUT"], "atexit"), "w").write("ran"))
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path, "name": __name__,
    "main": sys.modules["__main__"].__file__, "tmp": tempfile.gettempdir(),
    "sitecustomize": getattr(sys.modules.get("sitecustomize"), "MARK", None),
    "sum": torch.ones(300, 300).sum().item(), "threads": torch.get_num_threads(),
}, sort_keys=True))
"""


def _script(folder: Path, name: str, body: str) -> Path:
    script = folder / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    server = WarmPython(tmp_path_factory.mktemp("warm"), server_environment({"OMP_NUM_THREADS": "1"}), ("torch",))
    yield server
    server.stop()


def _both(warm: WarmPython, argv: list[str], env: dict[str, str], folder: Path) -> list[tuple[int, str]]:
    """(return code, output) of ``argv`` started by exec, then from the warm server, each with its own OUT folder."""
    results = []
    for way in ("exec", "warm"):
        out = folder / way
        out.mkdir()
        environment = {**env, "OUT": str(out)}
        if way == "exec":
            done = subprocess.run(argv, env=environment, cwd=folder, capture_output=True, text=True, timeout=120)
            results.append((done.returncode, done.stdout + done.stderr))
        else:
            code = warm.run(argv, env=environment, cwd=folder, output=out / "log", timeout=120)
            results.append((code, (out / "log").read_text()))
    return results


def test_a_program_started_warm_sees_and_ends_as_one_started_by_exec(warm, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("MARK = 'audited'\n")
    script = _script(tmp_path, "report", REPORT + "sys.exit(3)\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(site),
        "TMPDIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    (code_exec, out_exec), (code_warm, out_warm) = _both(warm, [str(script), "--flag", "x y"], env, tmp_path)
    assert code_exec == code_warm == 3
    by_exec, warm_report = json.loads(out_exec), json.loads(out_warm)
    assert by_exec["env"].pop("OUT") != warm_report["env"].pop("OUT")
    assert warm_report == by_exec
    assert (
        warm_report["sitecustomize"] == "audited" and warm_report["name"] == "__main__" and warm_report["sum"] == 90000
    )
    for way in ("exec", "warm"):
        assert (tmp_path / way / "thread").read_text() == "joined" and (tmp_path / way / "atexit").read_text() == "ran"


def test_a_program_started_through_the_shim_is_warm_and_ends_as_by_exec(warm, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    inner = _script(
        real, "inner", "import os, sys\nprint(os.getcwd(), sys.argv[1:], flush=True)\nos.kill(os.getpid(), 9)\n"
    )
    outer = _script(tmp_path, "outer", "import subprocess, sys\nsys.exit(-subprocess.run(['inner', 'a']).returncode)\n")
    env = {"PATH": f"{real}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    by_exec = _both(warm, [str(outer)], env, tmp_path)[0]
    through_shim = warm.run(
        [str(outer)],
        env={**env, "PATH": f"{warm.shim_folder(inner)}:{env['PATH']}"},
        cwd=tmp_path,
        output=tmp_path / "shim.log",
        timeout=120,
    )
    assert by_exec == (9, f"{tmp_path} ['a']\n")
    assert (through_shim, (tmp_path / "shim.log").read_text()) == by_exec


def test_a_program_past_its_time_is_killed(warm, tmp_path):
    script = _script(
        tmp_path, "sleeper", "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([str(script)], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, output=tmp_path / "log", timeout=3)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the server reaps the killed child"
    quick = _script(tmp_path, "quick", "")
    assert warm.run([str(quick)], env={}, cwd=tmp_path, output=tmp_path / "log", timeout=30) == 0, "the server lives on"


def test_without_pidfd_open_the_server_says_so_and_does_not_start(tmp_path):
    """Where the kernel (or a sandbox) lacks pidfd_open, start() raises WarmPythonUnavailable: the pod harness then
    starts pods by exec."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\ndel os.pidfd_open\n")
    server = WarmPython(tmp_path / "server", server_environment({"PYTHONPATH": str(site)}), preloaded=())
    with pytest.raises(WarmPythonUnavailable, match="no pidfd_open"):
        server.start()
