"""Did a change leave the pipeline's outputs as they were? Two pipeline runs compared stage by stage.

Each run is a parent ``ssl_pipeline`` run in an MLflow store (an sqlite file and its artifact folder, as ``make run``
leaves them in the project). Every stage run under it is matched by name with the other run's (tasks renamed since
are mapped by RENAMED) and compared: its metrics, and the sha256 of each artifact file. Figures that measure time,
not results (TIMING_METRICS, TIMING_ARTIFACTS), are left out. Stages only one run has (a run stopped early) are
listed, not compared.

    python benchmarks/same_outputs.py --a OLD/mlflow.db --b mlflow.db --name make_run_same_outputs

Two stores made on different CPUs, kernels (ATEN_CPU_CAPABILITY) or thread counts differ in their floats: compare
runs made alike.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result

RENAMED = {"pretrain_simclr": "pretrain_generic", "pretrain_domain_simclr": "pretrain_domain"}
RENAMED["pretrain_micle"] = "pretrain_case_pairs"
TIMING_METRICS = ("images_per_second", "seconds", "wall")
TIMING_ARTIFACTS = ("ingest_summary.json", "validation.json")
CHARTS = ".png"  # drawn from the metrics compared; their bytes carry the plotting library's metadata


def stage_runs(store: Path, parent: str | None) -> dict[str, dict]:
    """{stage name: {"metrics": {key: value}, "artifacts": {path: sha256}}} of the stage runs under ``parent`` (the
    newest ssl_pipeline run when None), with the parent itself under "ssl_pipeline" when it finished."""
    database = sqlite3.connect(store)
    if parent is None:
        parent = database.execute(
            "SELECT run_uuid FROM runs WHERE name = 'ssl_pipeline' ORDER BY start_time DESC LIMIT 1"
        ).fetchone()[0]
    children = database.execute(
        "SELECT runs.run_uuid, runs.name FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
        "WHERE tags.key = 'mlflow.parentRunId' AND tags.value = ? AND runs.status = 'FINISHED'",
        (parent,),
    ).fetchall()
    finished = database.execute("SELECT status FROM runs WHERE run_uuid = ?", (parent,)).fetchone()[0] == "FINISHED"
    stages = {}
    for run_id, name in [(parent, "ssl_pipeline")] * finished + children:
        metrics = dict(database.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)))
        stages[RENAMED.get(name, name)] = {
            "metrics": {key: value for key, value in metrics.items() if not any(t in key for t in TIMING_METRICS)},
            "artifacts": _artifact_hashes(store.parent / "mlartifacts" / run_id / "artifacts"),
        }
    return stages


def _artifact_hashes(folder: Path) -> dict[str, str]:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
        if path.name not in TIMING_ARTIFACTS and path.suffix != CHARTS
    }


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Per stage both runs have: the metric keys and artifact paths that differ (empty lists: the same outputs)."""
    stages = {}
    for name in sorted(set(a) & set(b)):
        differ = {}
        for kind in ("metrics", "artifacts"):
            left, right = a[name][kind], b[name][kind]
            differ[kind] = sorted(key for key in set(left) | set(right) if left.get(key) != right.get(key))
        stages[name] = {
            **differ,
            "metrics_compared": len(a[name]["metrics"]),
            "artifacts_compared": len(a[name]["artifacts"]),
        }
    return {
        "stages_compared": len(stages),
        "stages_identical": sum(not s["metrics"] and not s["artifacts"] for s in stages.values()),
        "only_in_a": sorted(set(a) - set(b)),
        "only_in_b": sorted(set(b) - set(a)),
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="the first run's mlflow.db (mlartifacts/ beside it)")
    parser.add_argument("--b", type=Path, required=True, help="the second run's mlflow.db")
    parser.add_argument("--run-a", help="the first parent run's id (default: the store's newest ssl_pipeline run)")
    parser.add_argument("--run-b", help="the second parent run's id")
    parser.add_argument("--note", default="", help="how each run was made (commit, command, kernels)")
    parser.add_argument("--name", default="same_outputs")
    args = parser.parse_args()
    result = compare(stage_runs(args.a, args.run_a), stage_runs(args.b, args.run_b))
    result["runs"] = {"a": str(args.a), "b": str(args.b), "note": args.note}
    path = write_result(args.name, result)
    print(f"{result['stages_identical']} of {result['stages_compared']} stages identical; written {path}")


if __name__ == "__main__":
    main()
