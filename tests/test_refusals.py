"""A refused input ends `pyflyte run` with one message naming what to fix, never a traceback; a crash keeps its
traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslflow.data.types import SourceError
from workflows import refusals

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_a_refusal_is_found_through_the_chain_flytekit_wraps_it_in():
    try:
        try:
            raise SourceError("scans/metadata.csv row 3, column 'path': contains a NUL byte")
        except SourceError as refusal:
            raise RuntimeError("Error encountered while executing 'tasks.ingest.ingest'") from refusal
    except RuntimeError as wrapped:
        assert isinstance(refusals.find_refusal(wrapped), SourceError)
    assert refusals.find_refusal(RuntimeError("a bug")) is None


def test_only_refusals_lose_their_traceback(monkeypatch, capsys):
    printed = []
    monkeypatch.setattr(
        refusals, "_flytekit_pretty_print_exception", lambda error, verbosity: printed.append((error, verbosity))
    )
    refusals.print_refusal_or_traceback(SourceError("a.png: zero-byte file"), 1)
    assert capsys.readouterr().err == "Refused (SourceError): a.png: zero-byte file\n" and not printed
    bug = KeyError("oops")
    refusals.print_refusal_or_traceback(bug, 1)
    refusals.print_refusal_or_traceback(SourceError("a.png"), 2)  # -vv: the user asked for the traceback
    assert [error for error, _ in printed][0] is bug and len(printed) == 2


def _pyflyte(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "pyflyte"), "run", *arguments]
    env = {**os.environ, "COLUMNS": "200", "FLYTE_SDK_LOCAL_SANDBOX": str(tmp_path / "sandbox"), "HOME": str(tmp_path)}
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)


def _folder(root: Path, metadata: str | None = None, undecodable: bool = False) -> Path:
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(400 + i).integers(0, 256, (20, 20), dtype=np.uint8)).save(
            root / f"scan{i}.png"
        )
    if metadata is not None:
        (root / "metadata.csv").write_text(metadata)
    if undecodable:
        (root / "scan9.png").write_bytes(b"\x89PNG cut short")
    return root


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty folder", "is empty"),
        ("undecodable file", "scan9.png"),
        ("NUL byte in a metadata path", "NUL"),
        ("label fraction of 0", "label_fractions[0] = 0.0 is not a fraction"),
    ],
)
def test_data_errors_are_refused_without_a_traceback(tmp_path, case, expected):
    if case == "empty folder":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "undecodable file":
        source = _folder(tmp_path / "scans", undecodable=True)
    elif case == "NUL byte in a metadata path":
        source = _folder(tmp_path / "scans", metadata="path,label\nscan0.png,a\nscan1\x00.png,b\n")
    else:
        source = _folder(tmp_path / "scans")
    options = ["--label_fractions", "[0.0, 0.5]"] if case == "label fraction of 0" else []
    result = _pyflyte(tmp_path, "workflows/data.py", "validate_data", "--source", str(source), *options)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "╭" not in output, output
    assert "Refused (" in result.stderr and expected in result.stderr, output


def test_the_pipeline_refuses_a_label_fraction_of_zero_before_any_training(tmp_path):
    result = _pyflyte(tmp_path, "workflows/pipeline.py", "ssl_pipeline", "--label_fractions", "[0.0]")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert (
        "label_fractions[0] = 0.0 is not a fraction" in result.stderr
        and "pretrain epoch" not in output
        and "ingest" not in result.stderr
    )
