"""Time per stage of the newest pipeline run, read back from its MLflow store (issue 12: `make run` within 600 s).

Every stage of `make run` is an MLflow run under one parent run; this script takes the newest parent
run of the store, sums its stage runs' durations by stage kind and writes them, with the wall time
`make run` printed, as a result JSON. Run it right after a cold `make run` (`make clean-cache` first,
or the stages are cache hits and have no new runs):

    make clean-cache && make run | tee run.log
    python benchmarks/stage_times.py --wall-seconds "$(sed -n 's/^pipeline wall time: \\([0-9]*\\) s$/\\1/p' run.log)"

The store is MLFLOW_TRACKING_URI, else `mlflow.db` in the working directory (as for `make run`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result

STAGE_TAG = "sslflow.stage"  # on every stage run (sslflow/tracking/runs.py)
PARENT_TAG = ("sslflow.kind", "pipeline")  # on the pipeline's parent run


def stage_kind(stage: str) -> str:
    """'finetune:simclr/linear@0.1/seed=0' -> 'finetune (linear)'; 'ingest:mnist-5k' -> 'ingest'; others as they are."""
    if stage.startswith("finetune:"):
        return f"finetune ({stage.split('/')[1].split('@')[0]})"
    return stage.split(":")[0]


def newest_parent_stages(client: MlflowClient) -> tuple[dict, list[tuple[str, float]]]:
    """(the newest parent run's {id, seconds}, [(stage, seconds)] of its finished stage runs)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        experiments,
        f"tags.`{PARENT_TAG[0]}` = '{PARENT_TAG[1]}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise SystemExit("no pipeline parent run in this store: run `make run` first")
    parent = parents[0]
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=5000)
    stages = [
        (run.data.tags.get(STAGE_TAG, run.info.run_name), (run.info.end_time - run.info.start_time) / 1000)
        for run in children
        if run.info.end_time
    ]
    parent_seconds = (parent.info.end_time - parent.info.start_time) / 1000 if parent.info.end_time else None
    return {"run_id": parent.info.run_id, "seconds": parent_seconds}, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wall-seconds", type=float, required=True, help="the 'pipeline wall time' make run printed")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    parent, stages = newest_parent_stages(client)
    by_kind, counts = defaultdict(float), defaultdict(int)
    for stage, seconds in stages:
        by_kind[stage_kind(stage)] += seconds
        counts[stage_kind(stage)] += 1
    stage_total = sum(by_kind.values())
    path = write_result(
        "make_run_stages",
        {
            "pipeline_wall_seconds": args.wall_seconds,
            "target_seconds": 600,
            "within_target": args.wall_seconds <= 600,
            "stage_seconds": {
                kind: round(seconds, 1) for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1])
            },
            "stage_runs": dict(counts),
            "stages_total_seconds": round(stage_total, 1),
            "outside_stages_seconds": round(args.wall_seconds - stage_total, 1),  # Flyte, task start-up, tracking
            "parent_run": parent,
            "load_average_at_end": os.getloadavg(),
        },
        args.out,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
