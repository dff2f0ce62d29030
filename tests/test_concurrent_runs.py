"""Two `pyflyte run` pipelines at once (different seeds), sharing one sqlite MLflow store and one HOME
(Flyte's local cache): both succeed, with their own MLflow runs and model versions, and the shared
cache is intact afterwards (a rerun of one executes no task body). Tiny data, one epoch, and the
Elastic tasks run in the pyflyte process (tests/inprocess_elastic.py) to keep the CPU time small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from sslflow.registry.aliases import CHAMPION, COMPLETE, STATE_TAG

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PYFLYTE = [sys.executable, str(Path(__file__).with_name("inprocess_elastic.py"))]  # pyflyte, Elastic in-process
MODEL_NAME = "sslflow-concurrent"
TINY_INPUTS = {
    "generic_ingest": {"max_images": 160},
    "domain_ingest": {"proxy_cases": True, "max_images": 310},
    "shift_ingest": {"all_test": True, "max_images": 130},
    "domain_pretraining": {"epochs": 1, "batch_size": 64},
    "finetune": {"epochs": 1, "min_steps": 2, "head_warmup_steps": 0},
    "label_fractions": [1.0],
    "registry": {"model_name": MODEL_NAME},
}


def _start(seed: int, root: Path) -> subprocess.Popen:
    inputs = {**TINY_INPUTS, "generic_pretraining": {"epochs": 1, "batch_size": 64, "seed": seed}}
    command = [*PYFLYTE, "run", "workflows/pipeline.py", "ssl_pipeline"]
    for name, value in inputs.items():
        command += [f"--{name}", json.dumps(value)]
    environment = {
        **os.environ,
        "HOME": str(root / "home"),
        "FLYTE_SDK_LOCAL_SANDBOX": str(root / "sandbox"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{root / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    with open(root / f"seed-{seed}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True
        )


def _finish(process: subprocess.Popen, root: Path, seed: int) -> str:
    process.wait(timeout=600)
    output = (root / f"seed-{seed}.log").read_text()
    assert process.returncode == 0, f"seed {seed} failed:\n{output[-4000:]}"
    return output


def test_two_pipelines_at_once_share_store_and_cache(tmp_path):
    (tmp_path / "home").mkdir()
    runs = {seed: _start(seed, tmp_path) for seed in (1, 2)}
    outputs = {seed: _finish(process, tmp_path, seed) for seed, process in runs.items()}

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment = client.get_experiment_by_name("sslflow")
    all_runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in all_runs if run.data.tags.get("sslflow.kind") == "pipeline"]
    assert len(parents) == 2 and all(run.info.status == "FINISHED" for run in parents)
    for parent in parents:
        stages = [
            run.data.tags.get("sslflow.stage")
            for run in all_runs
            if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        ]
        assert "register" in stages and "pretrain_generic" in stages, stages
        assert parent.info.run_id in outputs[1] + outputs[2]

    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(v.tags["pipeline_run_id"] for v in versions) == sorted(run.info.run_id for run in parents)
    assert all(v.tags[STATE_TAG] == COMPLETE for v in versions)
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version in {v.version for v in versions}
    # the two gates ran one after the other: one saw no champion, the other was compared with it
    assert sorted(v.tags["gate.champion_version"] for v in versions) in (["", "1"], ["", "2"])

    # the shared Flyte cache survived two writers: a rerun of seed 1 is all cache hits
    rerun = _finish(_start(1, tmp_path), tmp_path, 1)
    assert len(client.search_runs([experiment.experiment_id], max_results=1000)) == len(all_runs)
    assert "Accuracy on the in-domain test split" in rerun  # the summary's table, the same as the first run's:
    assert (
        rerun.split("Accuracy on the in-domain test split")[-1]
        == outputs[1].split("Accuracy on the in-domain test split")[-1]
    )
