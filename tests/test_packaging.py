"""`pyflyte package` compiles every workflow and launch plan; assertions on the serialized specs.

Nothing is built or looked up: SSLFLOW_CPU_IMAGE / SSLFLOW_GPU_IMAGE name pre-built images (see
images/specs.py), so no task carries an ImageSpec, and `--image` sets a default image no task may use.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from flyteidl.admin import launch_plan_pb2, task_pb2, workflow_pb2
from google.protobuf.json_format import MessageToDict

from images.specs import LOCK_FILE, cpu_image_spec, gpu_image_spec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PYFLYTE = Path(sys.executable).parent / "pyflyte"
CPU_IMAGE, GPU_IMAGE = (
    "registry.example.com/sslflow-cpu:packaging-test",
    "registry.example.com/sslflow-gpu:packaging-test",
)
DEFAULT_IMAGE = "registry.example.com/no-task-may-use-this:0"
WORKERS_PER_POD = 4  # registered with SSLFLOW_NPROC_PER_NODE=4: pods of 4 GPUs
TRAINING_TASKS = (
    "tasks.pretrain.pretrain_generic",
    "tasks.pretrain.pretrain_domain",
    "tasks.pretrain.pretrain_case_pairs",
    "workflows.launch_plans.pretrain_generic_multinode",
)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> dict[str, dict]:
    """{"tasks": {name: TaskTemplate as dict}, "workflows": {name: WorkflowSpec}, "launch_plans": {name:
    LaunchPlan}}."""
    root = tmp_path_factory.mktemp("package")
    environment = {
        **os.environ,
        "SSLFLOW_CPU_IMAGE": CPU_IMAGE,
        "SSLFLOW_GPU_IMAGE": GPU_IMAGE,
        "SSLFLOW_NPROC_PER_NODE": str(WORKERS_PER_POD),
        "SSLFLOW_MLFLOW_AUTH": "basic",
    }
    command = [
        str(PYFLYTE),
        "--pkgs",
        "workflows",
        "package",
        "--image",
        DEFAULT_IMAGE,
        "--output",
        str(root / "flyte-package.tgz"),
        "--force",
    ]
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with tarfile.open(root / "flyte-package.tgz") as archive:
        archive.extractall(root / "pb", filter="data")
    entities: dict[str, dict] = {"tasks": {}, "workflows": {}, "launch_plans": {}}
    for path in sorted((root / "pb").glob("*.pb")):
        kind = path.stem.rsplit("_", 1)[1]  # 1 task, 2 workflow, 3 launch plan (flyteidl ResourceType)
        message = {"1": task_pb2.TaskSpec, "2": workflow_pb2.WorkflowSpec, "3": launch_plan_pb2.LaunchPlan}[kind]()
        message.ParseFromString(path.read_bytes())
        if kind == "1":
            entities["tasks"][message.template.id.name] = MessageToDict(message.template)
        elif kind == "2":
            entities["workflows"][message.template.id.name] = MessageToDict(message.template)
        else:
            entities["launch_plans"][message.id.name] = MessageToDict(message)
    return entities


def _container(template: dict) -> dict:
    """The task's (primary) container: plain, or inside the pod template Elastic tasks use for /dev/shm."""
    if "container" in template:
        return template["container"]
    primary = template["config"]["primary_container_name"]
    return next(c for c in template["k8sPod"]["podSpec"]["containers"] if c["name"] == primary)


def _requests(container: dict) -> dict[str, str]:
    requests = container["resources"].get("requests", {})
    if isinstance(requests, dict):  # pod spec form
        return {key.replace("memory", "MEMORY").upper(): value for key, value in requests.items()}
    return {entry["name"]: entry["value"] for entry in requests}


def test_every_workflow_and_launch_plan_compiles(package):
    workflows = set(package["workflows"])
    for name in (
        "workflows.pipeline.ssl_pipeline",
        "workflows.launch_plans.scheduled_pipeline",
        "workflows.launch_plans.ssl_pipeline_multinode",
        "workflows.lifecycle.rollback",
    ):
        assert name in workflows, name
        assert name in package["launch_plans"], name  # its default launch plan
    assert {"sslflow_weekly_retraining", "sslflow_multinode_pretraining"} <= set(package["launch_plans"])


def test_every_task_names_its_image(package):
    for name, template in package["tasks"].items():
        image = _container(template)["image"]
        assert image in (CPU_IMAGE, GPU_IMAGE), f"{name} runs in {image}: give it container_image= from images/specs.py"
    for name in TRAINING_TASKS:
        assert _container(package["tasks"][name])["image"] == GPU_IMAGE, name


def test_pretraining_requests_gpus_and_an_accelerator(package):
    for name in TRAINING_TASKS:
        template = package["tasks"][name]
        assert int(_requests(_container(template))["GPU"]) >= 1, name
        assert template["extendedResources"]["gpuAccelerator"]["device"].startswith("nvidia-tesla-a100"), name
        assert template["metadata"]["retries"]["retries"] >= 1, f"{name}: preemptible GPU nodes need retries"
        assert template["extendedResources"]["sharedMemory"]["mountPath"] == "/dev/shm", (
            f"{name}: NCCL needs shared memory"
        )
        # a scheduled and a manual run with the same inputs: one trains, the other waits for its result
        assert template["metadata"].get("cacheSerializable") is True, f"{name}: GPU tasks use Cache(serialize=True)"


def _resources(container: dict, kind: str) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["resources"].get(kind, [])}


def test_training_pods_get_resources_per_worker(package):
    """CPU, memory, ephemeral storage (limits too), shared memory follow the GPUs; preemptible with a timeout."""
    from tasks.training_pods import CPU_PER_RANK, DISK_PER_RANK_GIB, MEMORY_PER_RANK_GIB, SHARED_MEMORY_PER_RANK_GIB

    for name, ranks in [(name, WORKERS_PER_POD) for name in TRAINING_TASKS[:3]] + [
        (TRAINING_TASKS[3], 8),
        ("tasks.finetune.finetune_pretrained", 1),
    ]:
        template = package["tasks"][name]
        expected = {
            "CPU": str(CPU_PER_RANK * ranks),
            "MEMORY": f"{MEMORY_PER_RANK_GIB * ranks}Gi",
            "GPU": str(ranks),
            "EPHEMERAL_STORAGE": f"{DISK_PER_RANK_GIB * ranks}Gi",
        }
        container = _container(template)
        assert _resources(container, "requests") == expected and _resources(container, "limits") == expected, name
        assert (
            template["extendedResources"]["sharedMemory"]["sizeLimit"] == f"{SHARED_MEMORY_PER_RANK_GIB * ranks}Gi"
        ), name
        assert template["metadata"]["interruptible"] is True and template["metadata"]["timeout"] == "86400s", name


def test_workers_per_pod_travel_into_the_pod(package):
    """The pod imports the task module again with only the pod's environment: its Elastic config starts as many
    workers as the pod has GPUs, and the pod checks it can use them."""
    from images.specs import POD_ENVIRONMENT

    for name in TRAINING_TASKS[:3]:
        env = _env(package["tasks"][name])
        assert env == {"SSLFLOW_NPROC_PER_NODE": str(WORKERS_PER_POD), "SSLFLOW_GPUS_PER_POD": str(WORKERS_PER_POD)}, (
            name
        )
    pod = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(PROJECT_ROOT),
        **POD_ENVIRONMENT,
        **env,
    }
    script = (
        "from tasks.pretrain import pretrain_generic as t; "
        "print(t.task_config.nproc_per_node, t.metadata.cache_version)"
    )
    imported = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=pod,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    workers, cache_version = imported.stdout.split()
    assert workers == str(WORKERS_PER_POD) and cache_version.endswith(f"-world{WORKERS_PER_POD}"), imported.stdout
    assert _env(package["tasks"]["tasks.finetune.finetune_pretrained"]) == {"SSLFLOW_GPUS_PER_POD": "1"}


def test_pretraining_cache_keys_on_the_world_size(package):
    """Steps per epoch and the global batch follow the world size: another number of workers misses the cache."""
    versions = {name: package["tasks"][name]["metadata"]["discoveryVersion"] for name in TRAINING_TASKS}
    assert versions["tasks.pretrain.pretrain_generic"].endswith(f"-world{WORKERS_PER_POD}")
    assert versions["workflows.launch_plans.pretrain_generic_multinode"].endswith("-world16")  # 2 pods x 8 GPUs


def test_mlflow_credentials_are_flyte_secrets(package):
    """Registered with SSLFLOW_MLFLOW_AUTH=basic: every task that talks to MLflow requests the Secret sslflow-mlflow,
    mounted into MLflow's own variables; nothing of it is in a template's environment."""
    mlflow_secrets = {
        ("sslflow-mlflow", "username", "MLFLOW_TRACKING_USERNAME"),
        ("sslflow-mlflow", "password", "MLFLOW_TRACKING_PASSWORD"),
    }
    without = set()
    for name, template in package["tasks"].items():
        requested = {
            (secret["group"], secret["key"], secret.get("envVar"))
            for secret in template.get("securityContext", {}).get("secrets", [])
        }
        assert not any("MLFLOW_TRACKING_" in key for key in _env(template)), name
        if not mlflow_secrets <= requested:
            without.add(name)
    # the tasks that never talk to MLflow: the plan, the chunks (and their map task),
    # the dynamic fine-tuning (it only builds the sub-workflow of its tasks)
    assert {re.sub(r"_[0-9a-f]{32}-arraynode$", "", name) for name in without} == {
        "tasks.ingest.plan_ingest",
        "tasks.ingest.ingest_chunk",
        "tasks.ingest.map_ingest_chunk",
        "tasks.finetune.finetune_all",
    }, without


def _env(template: dict) -> dict[str, str]:
    return {pair["key"]: pair["value"] for pair in _container(template).get("env", [])}


def _node_target(node: dict) -> str:
    """The task or sub-workflow a workflow node runs."""
    if "workflowNode" in node:
        return node["workflowNode"]["subWorkflowRef"]["name"]
    return node.get("taskNode", {}).get("referenceId", {}).get("name", "")


def test_ingest_decodes_chunks_in_a_map_task_with_bounded_concurrency(package):
    """plan -> map task over chunks (ArrayNode, parallelism = INGEST_CONCURRENCY, every chunk must succeed) -> join."""
    from tasks.ingest import INGEST_CONCURRENCY

    nodes = package["workflows"]["workflows.ingest.ingest"]["nodes"]
    mapped = [node["arrayNode"] for node in nodes if "arrayNode" in node]
    assert (
        len(mapped) == 1 and int(mapped[0]["parallelism"]) == INGEST_CONCURRENCY and mapped[0]["minSuccessRatio"] == 1.0
    )
    assert "ingest_chunk" in mapped[0]["node"]["taskNode"]["referenceId"]["name"]
    assert [_node_target(node) for node in nodes if "taskNode" in node] == [
        "tasks.ingest.plan_ingest",
        "tasks.ingest.join_ingest",
    ]
    assert package["tasks"]["tasks.ingest.ingest_chunk"]["metadata"].get("discoverable"), (
        "a chunk of unchanged files is a cache hit"
    )
    join = _resources(_container(package["tasks"]["tasks.ingest.join_ingest"]), "requests")
    assert join["EPHEMERAL_STORAGE"] == "8Gi", "the join's scratch (chunk tables, sqlite facts and sorts) is on disk"
    assert "workflows.ingest.ingest" in {
        _node_target(node) for node in package["workflows"]["workflows.pipeline.ssl_pipeline"]["nodes"]
    }


def test_multinode_plan_runs_simclr_as_a_pytorch_job(package):
    single, multi = (
        package["tasks"]["tasks.pretrain.pretrain_generic"],
        package["tasks"]["workflows.launch_plans.pretrain_generic_multinode"],
    )
    assert single["type"] == "python-task"  # Elastic with one node: torchrun inside one pod
    assert multi["type"] == "pytorch"  # a PyTorchJob
    assert multi["custom"]["workerReplicas"]["replicas"] == 2
    assert multi["custom"]["elasticConfig"]["nprocPerNode"] == 8
    assert _requests(_container(multi))["GPU"] == "8"
    # the same DAG as ssl_pipeline but for that one task
    nodes = {
        name: [_node_target(node) for node in package["workflows"][name]["nodes"]]
        for name in ("workflows.pipeline.ssl_pipeline", "workflows.launch_plans.ssl_pipeline_multinode")
    }
    swapped = [
        n.replace("tasks.pretrain.pretrain_generic", "workflows.launch_plans.pretrain_generic_multinode")
        for n in nodes["workflows.pipeline.ssl_pipeline"]
    ]
    assert nodes["workflows.launch_plans.ssl_pipeline_multinode"] == swapped


def test_caching_and_retries(package):
    tasks = package["tasks"]
    for name in ("tasks.ingest.join_ingest", *TRAINING_TASKS, "tasks.evaluate.evaluate"):
        metadata = tasks[name]["metadata"]
        assert metadata.get("discoverable") and metadata.get("discoveryVersion"), f"{name} is not cached"
        assert "parent_run_id" in metadata.get("cacheIgnoreInputVars", []), name
    # register is cached on the parent run (so on the store): another store gets its own registration
    register = tasks["tasks.register.register"]["metadata"]
    assert register.get("discoverable") and "parent_run_id" not in register.get("cacheIgnoreInputVars", [])
    for name in (
        "tasks.ingest.plan_ingest",
        "tasks.ingest.ingest_chunk",
        "tasks.ingest.join_ingest",
        "tasks.register.register",
    ):
        assert tasks[name]["metadata"]["retries"]["retries"] >= 1, name
    # run every time, and once: a rollback retried would roll back twice
    for name in ("tasks.ingest.source_fingerprint", "tasks.register.rollback_champion", "tasks.store.tracking_store"):
        assert not tasks[name]["metadata"].get("discoverable"), name
    assert not tasks["tasks.register.rollback_champion"]["metadata"].get("retries", {}).get("retries")


def test_weekly_retraining_schedule(package):
    plan = package["launch_plans"]["sslflow_weekly_retraining"]["spec"]
    schedule = plan["entityMetadata"]["schedule"]
    assert schedule == {"cronSchedule": {"schedule": "0 3 * * 1"}, "kickoffTimeInputArg": "kickoff_time"}
    assert plan["defaultInputs"]["parameters"]["kickoff_time"].get("required") is True
    assert plan["workflowId"]["name"] == "workflows.launch_plans.scheduled_pipeline"
    pipeline_inputs = set(package["workflows"]["workflows.pipeline.ssl_pipeline"]["interface"]["inputs"]["variables"])
    scheduled_inputs = set(
        package["workflows"]["workflows.launch_plans.scheduled_pipeline"]["interface"]["inputs"]["variables"]
    )
    assert scheduled_inputs == pipeline_inputs | {"kickoff_time"}


def test_images_install_the_whole_lock_file():
    """Both images are built from requirements.lock itself (every package and dependency at its locked version)."""
    lines = [line for line in LOCK_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) > 200 and all(re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?==\S+", line) for line in lines), (
        "the lock pins every line"
    )
    for spec in (cpu_image_spec, gpu_image_spec):
        assert spec.requirements == str(LOCK_FILE) and not spec.packages, f"{spec.name} installs only part of the lock"


def test_flyte_config_is_read_by_flytekit():
    from flytekit.configuration import Config

    config = Config.auto(config_file=str(PROJECT_ROOT / "flyte.config"))
    assert config.platform.endpoint == "flyte.example.com:443" and config.platform.auth_mode == "Pkce"
