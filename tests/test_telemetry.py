"""No dependency reports home (sslflow/telemetry.py).

Here: a local process started with none of the switches in its environment (a bare `pyflyte run`, a pod of an image
built elsewhere) that imports sslflow and checks an ONNX export, as the register task does, leaves no telemetry store in
its HOME and looks nothing up. The whole pipeline's pods: tests/test_pipeline_pods.py
(test_no_pod_of_the_pipeline_reports_home).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from network_audit import audited_python_path, network_events, telemetry_stores

from sslflow.telemetry import TELEMETRY_OFF

PROJECT_ROOT = Path(__file__).resolve().parents[1]

EXPORT_AND_SERVE = """
import sys
import numpy as np
from torch import nn
from ssl_models.augment import AugmentConfig
from sslflow.registry.serving import RegisteredClassifier, export_onnx
model = RegisteredClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), AugmentConfig(output_size=8)).eval()
images = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8)).astype(np.uint8)
export_onnx(model, images, __import__("pathlib").Path(sys.argv[1]))
"""


def test_a_local_run_without_the_switches_in_its_environment_leaves_no_telemetry_store(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    audit = audited_python_path(tmp_path / "audit")
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(audit), str(PROJECT_ROOT)]),
    }
    assert not TELEMETRY_OFF.keys() & environment.keys()
    command = [sys.executable, "-c", EXPORT_AND_SERVE, str(tmp_path / "model.onnx")]
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model.onnx").is_file(), "ONNX Runtime ran the exported model"
    assert not telemetry_stores(home), [str(path) for path in home.rglob("*")]
    assert not [event for event in network_events(audit) if event["event"] == "lookup"]


def test_the_images_switch_telemetry_off():
    """Every pod's environment holds the switches, before any Python code of the project runs."""
    from images.specs import POD_ENVIRONMENT, cpu_image_spec, gpu_image_spec

    assert TELEMETRY_OFF.items() <= POD_ENVIRONMENT.items()
    assert all(TELEMETRY_OFF.items() <= spec.env.items() for spec in (cpu_image_spec, gpu_image_spec))
