"""The whole of workflows/pipeline.py ssl_pipeline, fast-registered (the pods download the code archive, as after
`pyflyte run --remote`), walked node by node as propeller does (tests/pod_workflows.py): every task a pod
(tests/pod_harness.py) against a moto S3 server and an MLflow server process, the ingest sub-workflows and their map
tasks, the dynamic fine-tuning's compiled nodes; every stage logged on that live tracking server (sqlite backend,
proxied artifacts), the model registered there and loaded by alias over HTTP; and no pod reporting to anything but the
configured services.

The data workflow's pods, one task at a time: tests/test_pods.py.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from flytekit.models.literals import LiteralMap
from live_mlflow import MlflowServer, mlflow_at
from mlflow.tracking import MlflowClient
from moto_s3 import moto_s3_server, s3_environment
from network_audit import audited_python_path, network_events, telemetry_stores
from pod_harness import literals, python_value, registered_runner, serialized_package
from pod_workflows import WorkflowWalk

from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import EvaluationConfig, IngestConfig
from sslflow.registry.aliases import CHAMPION, COMPLETE, STATE_TAG
from sslflow.tracking.store import EXPERIMENT_NAME


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """ssl_pipeline's tasks, fast-registered (one `pyflyte package --fast` for the module)."""
    return serialized_package(tmp_path_factory.mktemp("package"), fast=True)


PIPELINE = "workflows.pipeline.ssl_pipeline"
ONE_CHUNK = 100_000  # chunk_images: each built-in source in one chunk pod (the data workflow's tests above cut several)
SMALL_PIPELINE = dict(  # built-in sources, a few hundred images each, one epoch, one label fraction, one seed
    generic_source="mnist-5k",  # a chunk pod of fashion-mnist would decode all 60,000 (max_images applies at the join)
    generic_ingest=IngestConfig(max_images=200, chunk_images=ONE_CHUNK),
    domain_ingest=IngestConfig(proxy_cases=True, max_images=600, chunk_images=ONE_CHUNK),
    shift_ingest=IngestConfig(all_test=True, max_images=200, chunk_images=ONE_CHUNK),
    generic_pretraining=PretrainConfig(epochs=1, batch_size=64),
    domain_pretraining=PretrainConfig(epochs=1, batch_size=64),
    finetune=FinetuneConfig(epochs=1, min_steps=3),
    label_fractions=[1.0],
    self_train=SelfTrainConfig(steps=3, confidence_threshold=0.0, max_label_fraction=1.0),
    evaluation=EvaluationConfig(severities=(2,)),  # 7 evaluation sets, not 17
)


@pytest.fixture(scope="module")
def pipeline_pods(tmp_path_factory, package):
    """ssl_pipeline, fast-registered, run node by node as pods against a moto S3 server and an MLflow server, every
    pod's network events recorded; the walk (what ran, each node's inputs and outputs), its summary, the services."""
    from workflows.pipeline import ssl_pipeline

    work = tmp_path_factory.mktemp("pipeline-pods")
    audit = audited_python_path(work / "audit")
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        moto_s3_server(work) as endpoint,
        MlflowServer(work / "mlflow") as mlflow,
    ):
        s3_environment(monkeypatch, endpoint)
        runner = registered_runner(work, endpoint, mlflow.uri, fast_archive=package.fast_archive, python_path=(audit,))
        walk = WorkflowWalk(runner, package)
        inputs = package.defaults[PIPELINE].literals | literals(ssl_pipeline, **SMALL_PIPELINE).literals
        outputs = walk.run(PIPELINE, LiteralMap(inputs))
        services = {endpoint.removeprefix("http://"), mlflow.uri.removeprefix("http://")}
        summary = python_value(outputs.literals["o0"], str)
        yield {
            "walk": walk,
            "package": package,
            "work": work,
            "audit": audit,
            "summary": summary,
            "services": services,
            "endpoint": endpoint,
            "mlflow": mlflow,
        }


def _task_nodes(package, workflow: str) -> set[str]:
    """The tasks of ``workflow``'s nodes and of its sub-workflows' nodes (a map task's, an array node's), by name."""
    names = set()
    for node in package.workflows[workflow].nodes:
        target = node.WhichOneof("target")
        if target == "workflow_node":
            names |= _task_nodes(package, node.workflow_node.sub_workflow_ref.name)
        elif target == "array_node":
            names.add(node.array_node.node.task_node.reference_id.name)
        else:
            names.add(node.task_node.reference_id.name)
    return names


def test_every_task_of_the_pipeline_runs_as_a_fast_registered_pod(pipeline_pods):
    """Every node of ssl_pipeline ran as a pod that downloaded the code archive; finetune_all's pod compiled the
    fine-tuning nodes (the floors and each pretrained encoder x {linear probe, fine-tune}) and each ran as a pod."""
    walk, package, summary = pipeline_pods["walk"], pipeline_pods["package"], pipeline_pods["summary"]
    ran = set(walk.nodes.values())
    assert _task_nodes(package, PIPELINE) <= ran, _task_nodes(package, PIPELINE) - ran
    assert {
        "tasks.finetune.finetune_all",
        "tasks.self_train.self_train",
        "tasks.evaluate.evaluate",
        "tasks.register.register",
        "tasks.pipeline_run.report",
    } <= ran
    dynamic = next(path for path, name in walk.nodes.items() if name == "tasks.finetune.finetune_all")
    compiled = sorted(name for path, name in walk.nodes.items() if path.startswith(f"{dynamic}/"))
    assert compiled.count("tasks.finetune.finetune_pretrained") == 6 and {
        "tasks.finetune.probe_pixels",
        "tasks.finetune.finetune_scratch",
    } <= set(compiled)
    assert all(task.args[0] == "pyflyte-fast-execute" for task in package.tasks.values())
    pods = sorted((pipeline_pods["work"] / "pods").iterdir())
    assert len(pods) >= len(walk.nodes) and all((pod / "root" / "tasks" / "finetune.py").is_file() for pod in pods), (
        "every pod ran the archive's code"
    )
    assert "Registered model: sslflow-mnist-5k version 1" in summary and "| simclr+micle | finetune | 1 (" in summary


def test_no_pod_of_the_pipeline_reports_home(pipeline_pods):
    """No pod of the whole run leaves a telemetry store (ONNX Runtime's device id and event queue: the register pod
    checks the ONNX export) or looks up or connects to anything but the object store, the tracking server and
    Flyte's statsd (flytekit's StatsConfig: the cluster's own metrics, on the pod's node)."""
    from flytekit.configuration import StatsConfig

    statsd = StatsConfig.auto()
    pods = sorted((pipeline_pods["work"] / "pods").iterdir())
    assert not [store for pod in pods for store in telemetry_stores(pod / "home")]
    events = network_events(pipeline_pods["audit"])
    assert any(event["event"] == "connect" for event in events), "the audit hook recorded the pods' connections"
    services = pipeline_pods["services"] | {
        f"{statsd.host}:{statsd.port}"
    }  # flytekit's task metrics to the node's statsd
    lookups = {f"{event['host']}:{event['port']}" for event in events if event["event"] == "lookup"}
    connects = {
        ":".join(map(str, event["address"]))
        for event in events
        if event["event"] == "connect" and event["family"] != "AF_UNIX"
    }
    assert lookups <= services and connects <= services, (lookups - services, connects - services)


def test_every_stage_logs_and_the_model_registers_on_the_live_tracking_server(pipeline_pods, monkeypatch):
    """The pods' MLflow runs, the registered version and its files are on the `mlflow server` process (its sqlite
    store, artifacts proxied into its folder); the champion loads by alias over HTTP and predicts."""
    server, summary = pipeline_pods["mlflow"], pipeline_pods["summary"]
    name = "sslflow-mnist-5k"
    assert f"Registered model: {name} version 1" in summary and server.uri in summary
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server stores artifacts
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    stages = {run.data.tags.get("sslflow.stage", "PARENT"): run.info.status for run in runs}
    for stage in ("PARENT", "pretrain_generic", "pretrain_case_pairs", "evaluate", "register"):
        assert stages.get(stage) == "FINISHED", (stage, stages)
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert champion.version == "1" and champion.tags[STATE_TAG] == COMPLETE
    assert any((server.root / "artifacts").rglob("MLmodel"))
    with mlflow_at(monkeypatch, server.uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    probabilities = model.predict(np.zeros((2, 1, 28, 28), dtype=np.float32))
    assert probabilities.shape == (2, len(json.loads(champion.tags["class_names"])))
