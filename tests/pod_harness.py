"""Run Flyte tasks the way a pod on a cluster runs them, for tests: a harness, not a scheduler.

A pod of a Flyte task runs the container command that `pyflyte package` serialized into the task template
(``pyflyte-execute`` / ``pyflyte-map-execute`` with its resolver and loader arguments), in the task's image,
with the environment its pod spec declares, Secrets mounted as files, and its inputs and outputs as literal
files (``inputs.pb``, ``outputs.pb``) in the object store. ``PodRunner.run`` does the same here:

- the template's own ``args``, with ``{{.input}}``, ``{{.outputPrefix}}`` etc. filled in as propeller does;
- a new process with an empty working directory, its own HOME and TMPDIR, and only the environment a pod
  has: the image's variables (images/specs.py), the template's, what Flyte injects (object-store endpoint and
  credentials, FLYTE_INTERNAL_*), what the user registers with ``--env`` (``registered``), Secrets as files
  under FLYTE_SECRETS_DEFAULT_DIR; nothing else of this process's environment. The process is a fork of a warm
  interpreter that imported PyTorch, MLflow and pandas once (tests/warm_python.py says what that changes; this
  project's modules and flytekit are imported in the pod); ``SSLFLOW_TEST_COLD_PODS=1`` starts each by exec;
- inputs written to and outputs read from an ``s3://`` prefix on a real (moto) S3 server;
- a map task's subtask with the index propeller gives it (BATCH_JOB_ARRAY_INDEX_VAR_NAME), over the collection
  the previous node returned (plan_ingest's chunk-file references: blob literals, each with its cache hash), its
  outputs gathered into the collection the next node reads, as an ArrayNode does;
- the size of every literal file it writes or reads (``literal_files``), which propeller would refuse over
  ``storage.limits.maxDownloadMBs``.

The code comes from this checkout (PYTHONPATH), as the image's copy of it would; or, for a package serialized with
``fast=True`` (what `pyflyte run --remote` and `pyflyte register` do), from the code archive: the template's args then
start with ``pyflyte-fast-execute``, which downloads the archive from the object store into the pod (its ``/root``
is the pod's own folder here) and runs the task from there, nothing of this checkout on the pod's PYTHONPATH.

A failed pod raises ``PodFailed`` with what Flyte reads from the ``error.pb`` it wrote: the error's kind
(RECOVERABLE, which Flyte retries, or NON_RECOVERABLE) and origin (USER or SYSTEM). A dynamic task's pod writes
``futures.pb`` (the sub-workflow it compiled) instead of outputs: ``execute`` returns it, and tests/pod_workflows.py
runs its nodes.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from flyteidl.admin import launch_plan_pb2, task_pb2, workflow_pb2
from flyteidl.core import (
    dynamic_job_pb2,
    errors_pb2,
    execution_pb2,
    literals_pb2,
    tasks_pb2,
)
from flyteidl.core import (
    workflow_pb2 as core_workflow_pb2,
)
from flytekit.models.literals import Literal, LiteralCollection, LiteralMap
from warm_python import WarmPython, WarmPythonUnavailable, server_environment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# SSLFLOW_TEST_COLD_PODS=1: every pod a fresh process (exec), not a fork of the warm interpreter (tests/warm_python.py).
COLD_PODS = os.environ.get("SSLFLOW_TEST_COLD_PODS") == "1"
CPU_IMAGE, GPU_IMAGE = "registry.example.com/sslflow-cpu:pod-test", "registry.example.com/sslflow-gpu:pod-test"


@dataclass(frozen=True)
class SerializedTask:
    """What a pod of a task runs: its container args, the env its template declares, the Secrets it requests."""

    name: str
    args: list[str]
    env: dict[str, str]
    secrets: list[tuple[str, str]]

    @classmethod
    def from_template(cls, template: tasks_pb2.TaskTemplate) -> SerializedTask:
        """The pod of a task template (its container, or a pod template's primary container)."""
        container = template.container if template.HasField("container") else _primary_container(template)
        args = list(container.args)
        env = {pair.key: pair.value for pair in container.env}
        secrets = [(secret.group, secret.key) for secret in template.security_context.secrets]
        return cls(name=template.id.name, args=args, env=env, secrets=secrets)

    def in_image(self) -> SerializedTask:
        """The task as registered with its code in the image (`pyflyte register --copy none`): the same command without
        the fast-execute prefix that downloads the code archive."""
        if self.args[0] != "pyflyte-fast-execute":
            return self
        return SerializedTask(
            name=self.name, args=self.args[self.args.index("--") + 1 :], env=self.env, secrets=self.secrets
        )


@dataclass(frozen=True)
class Package:
    """What `pyflyte package` serialized: tasks and workflows by name, each launch plan's default inputs, and the
    code archive of a fast package (None otherwise)."""

    tasks: dict[str, SerializedTask]
    workflows: dict[str, core_workflow_pb2.WorkflowTemplate]
    defaults: dict[str, LiteralMap]
    fast_archive: Path | None


def serialized_package(work: Path, package: str = "workflows", *, fast: bool = False) -> Package:
    """Every task, workflow and launch plan of ``package`` as `pyflyte package` (``--fast``: with a code archive)
    serializes them. A map task's subtask is also listed by the mapped task's name with a ``map:`` prefix."""
    environment = {**os.environ, "SSLFLOW_CPU_IMAGE": CPU_IMAGE, "SSLFLOW_GPU_IMAGE": GPU_IMAGE}
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "package.tgz"
    command = [
        str(BIN / "pyflyte"),
        "--pkgs",
        package,
        "package",
        "--image",
        "registry.example.com/default:0",
        "--output",
        str(archive),
        "--force",
    ]
    result = subprocess.run(
        command + ["--fast"] * fast,
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with tarfile.open(archive) as package_file:
        package_file.extractall(work / "package", filter="data")
    tasks, workflows, defaults = {}, {}, {}
    for path in sorted(
        (work / "package").glob("*.pb")
    ):  # <index>_<name>_<ResourceType>.pb: 1 task, 2 workflow, 3 launch plan
        kind = path.stem.rsplit("_", 1)[-1]
        if kind == "1":
            task = SerializedTask.from_template(_parsed(task_pb2.TaskSpec, path.read_bytes()).template)
            tasks[task.name] = task
            if "pyflyte-map-execute" in task.args:
                tasks[f"map:{task.args[task.args.index('task-name') + 1]}"] = task
        elif kind == "2":
            spec = _parsed(workflow_pb2.WorkflowSpec, path.read_bytes())
            workflows |= {template.id.name: template for template in [spec.template, *spec.sub_workflows]}
        else:
            plan = _parsed(launch_plan_pb2.LaunchPlan, path.read_bytes())
            parameters = plan.spec.default_inputs.parameters
            literal_map = literals_pb2.LiteralMap(
                literals={name: p.default for name, p in parameters.items() if p.HasField("default")}
            )
            defaults[plan.id.name] = LiteralMap.from_flyte_idl(literal_map)
    fast_archive = next((work / "package").glob("fast*.tar.gz"), None) if fast else None
    return Package(tasks=tasks, workflows=workflows, defaults=defaults, fast_archive=fast_archive)


def _primary_container(template):
    """The primary container of a pod-template task (Elastic's, for its shared memory), as a Container-like object."""
    from google.protobuf.json_format import MessageToDict

    pod = MessageToDict(template.k8s_pod.pod_spec)
    primary = template.config["primary_container_name"]
    spec = next(c for c in pod["containers"] if c["name"] == primary)

    @dataclass
    class _Pair:
        key: str
        value: str

    @dataclass
    class _Container:
        args: list[str]
        env: list[_Pair] = field(default_factory=list)

    return _Container(args=spec["args"], env=[_Pair(e["name"], e.get("value", "")) for e in spec.get("env", [])])


class PodFailed(RuntimeError):
    """A pod's task failed: the ErrorDocument it wrote (``kind``: RECOVERABLE or NON_RECOVERABLE; ``origin``: USER or
    SYSTEM), as Flyte reads it to decide on a retry."""

    def __init__(self, pod: str, task: str, document: errors_pb2.ErrorDocument):
        error = document.error
        self.kind = errors_pb2.ContainerError.Kind.Name(error.kind)
        self.origin = execution_pb2.ExecutionError.ErrorKind.Name(error.origin)
        self.code, self.message = error.code, error.message
        super().__init__(f"pod {pod} ({task}) failed: {self.kind} {self.origin} {self.code}: {self.message}")

    @property
    def recoverable(self) -> bool:
        return self.kind == "RECOVERABLE"


class PodRunner:
    """Runs serialized tasks as pods against an S3 endpoint; every literal file it wrote or read is in
    ``literal_files``."""

    def __init__(
        self,
        work: Path,
        endpoint: str,
        *,
        bucket: str = "flyte",
        registered: dict[str, str] | None = None,
        secrets: dict[tuple[str, str], str] | None = None,
        setup_endpoint: str | None = None,
        fast_archive: Path | None = None,
        python_path: tuple[Path, ...] = (),
        parallel_items: int = 2,
    ):
        """endpoint: the object store as the pods see it; setup_endpoint: as this process sees it (default: the same);
        fast_archive: the code archive of a fast package (uploaded here; the pods run the code from it);
        python_path: folders put on every pod's PYTHONPATH before the code (a test's sitecustomize);
        parallel_items: how many of a map task's pods run at once (an ArrayNode runs them in parallel)."""
        self.work, self.endpoint, self.bucket = work, endpoint, bucket
        self.registered, self.secrets = dict(registered or {}), dict(secrets or {})
        self.execution = f"pod-test-{uuid.uuid4().hex[:8]}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=setup_endpoint or endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        if bucket not in {entry["Name"] for entry in self.s3.list_buckets()["Buckets"]}:
            self.s3.create_bucket(Bucket=bucket)
        self.literal_files: dict[str, int] = {}
        self.parallel_items = parallel_items
        self.python_path = [*map(str, python_path), *([] if fast_archive else [str(PROJECT_ROOT)])]
        self.code_archive = None
        if (
            fast_archive is not None
        ):  # where `pyflyte register` uploads it; propeller fills in {{ .remote_package_path }}
            self.code_archive = f"s3://{bucket}/fast/{self.execution}/{fast_archive.name}"
            self.s3.upload_file(str(fast_archive), bucket, self._key(self.code_archive))

    def run(self, task: SerializedTask, node: str, inputs: LiteralMap) -> LiteralMap:
        """Run ``task`` as the pod of ``node`` with ``inputs``; its outputs."""
        outputs = self.execute(task, node, inputs)
        assert isinstance(outputs, LiteralMap), (
            f"{task.name} is a dynamic task: its pod returned a workflow (tests/pod_workflows.py runs it)"
        )
        return outputs

    def execute(
        self, task: SerializedTask, node: str, inputs: LiteralMap
    ) -> LiteralMap | dynamic_job_pb2.DynamicJobSpec:
        """Run ``task`` as the pod of ``node``: its outputs, or the sub-workflow a dynamic task's pod compiled."""
        prefix = f"s3://{self.bucket}/metadata/{self.execution}/{node}"
        self._put(f"{prefix}/inputs.pb", inputs)
        self._start(task, node, prefix, prefix, index=None)
        futures = self._read(f"{prefix}/futures.pb")
        if futures is not None:
            return _parsed(dynamic_job_pb2.DynamicJobSpec, futures)
        return self._get(f"{prefix}/outputs.pb")

    def run_map(self, task: SerializedTask, node: str, inputs: LiteralMap, size: int) -> LiteralMap:
        """Run the map task's subtask ``size`` times, as an ArrayNode does: every subtask reads the node's inputs and
        takes the item at its index; the outputs are gathered in index order into one collection per output."""
        prefix = f"s3://{self.bucket}/metadata/{self.execution}/{node}"
        self._put(f"{prefix}/inputs.pb", inputs)

        def run_item(index: int) -> LiteralMap:
            self._start(task, f"{node}-{index}", prefix, f"{prefix}/{index}", index=index)
            return self._get(f"{prefix}/{index}/outputs.pb")

        with ThreadPoolExecutor(max_workers=self.parallel_items) as pods:
            outputs = list(pods.map(run_item, range(size)))  # in index order; the first failure is raised
        names = outputs[0].literals.keys() if outputs else []
        return LiteralMap(
            {name: Literal(collection=LiteralCollection([o.literals[name] for o in outputs])) for name in names}
        )

    def _start(
        self, task: SerializedTask, pod: str, input_prefix: str, output_prefix: str, *, index: int | None
    ) -> None:
        folder = self.work / "pods" / pod
        for part in ("home", "tmp", "cwd", "secrets"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        for group, key in task.secrets:
            if (group, key) in self.secrets:
                (folder / "secrets" / group).mkdir(exist_ok=True)
                (folder / "secrets" / group / key).write_text(self.secrets[(group, key)])
        values = {
            "{{.input}}": f"{input_prefix}/inputs.pb",
            "{{.outputPrefix}}": output_prefix,
            "{{.rawOutputDataPrefix}}": f"s3://{self.bucket}/raw/{self.execution}/{pod}",
            "{{.checkpointOutputPrefix}}": f"s3://{self.bucket}/checkpoints/{self.execution}/{pod}",
            "{{.prevCheckpointPrefix}}": '""',
        }
        args = [values.get(arg, arg) for arg in self._fast_args(task.args, folder)]
        command = [str(BIN / args[0]), *args[1:]]
        environment = self._environment(task, folder, index)
        log = folder / "log.txt"
        warm = None if COLD_PODS else warm_python()
        if warm is None:
            with open(log, "wb") as output:
                returncode = subprocess.run(
                    command, cwd=folder / "cwd", env=environment, stdout=output, stderr=subprocess.STDOUT, timeout=600
                ).returncode
        else:
            environment["PATH"] = f"{warm.shim_folder()}:{environment['PATH']}"  # fast-execute's child starts warm too
            returncode = warm.run(command, env=environment, cwd=folder / "cwd", output=log, timeout=600)
        if returncode != 0:
            raise RuntimeError(f"pod {pod} ({task.name}) exited with {returncode}:\n{log.read_text()[-4000:]}")
        error = self._read(f"{output_prefix}/error.pb")
        if error is not None:  # the task failed: pyflyte-execute writes error.pb (what Flyte shows) and exits 0
            raise PodFailed(pod, task.name, _parsed(errors_pb2.ErrorDocument, error))

    def _fast_args(self, args: list[str], folder: Path) -> list[str]:
        """A fast-registered task's args with the code archive's URI and the image's /root (here: the pod's
        ``root``)."""
        if args[0] != "pyflyte-fast-execute":
            return args
        assert self.code_archive is not None, (
            "a fast-registered task needs the package's code archive (PodRunner's fast_archive)"
        )
        (folder / "root").mkdir(exist_ok=True)
        filled = [self.code_archive if arg == "{{ .remote_package_path }}" else arg for arg in args]
        destination = filled.index("--dest-dir") + 1
        return [*filled[:destination], str(folder / "root"), *filled[destination + 1 :]]

    def _environment(self, task: SerializedTask, folder: Path, index: int | None) -> dict[str, str]:
        from images.specs import POD_ENVIRONMENT

        environment = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(folder / "home"),
            "TMPDIR": str(folder / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(self.python_path),
            **POD_ENVIRONMENT,
            **task.env,
            "FLYTE_AWS_ENDPOINT": self.endpoint,
            "FLYTE_AWS_ACCESS_KEY_ID": "testing",
            "FLYTE_AWS_SECRET_ACCESS_KEY": "testing",
            "FLYTE_INTERNAL_EXECUTION_ID": self.execution,
            "FLYTE_INTERNAL_EXECUTION_PROJECT": "sslflow",
            "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development",
            "FLYTE_INTERNAL_TASK_NAME": task.name,
            "FLYTE_INTERNAL_TASK_VERSION": "pod-test",
            "FLYTE_SECRETS_DEFAULT_DIR": str(folder / "secrets"),
            **self.registered,
            **self._no_gpus(task),
            **self._cpu_share(),
        }
        if index is not None:
            environment |= {
                "BATCH_JOB_ARRAY_INDEX_VAR_NAME": "FLYTE_K8S_ARRAY_INDEX",
                "FLYTE_K8S_ARRAY_INDEX": str(index),
            }
        return environment

    @staticmethod
    def _cpu_share() -> dict[str, str]:
        """The share of this machine's cores a test worker has (tests/conftest.py sets OMP_NUM_THREADS under
        pytest-xdist), passed on as the pod's thread count: what a pod's CPU limit gives it on a node
        (ssl_models.cpu_threads). Without it, every pod here would run a thread per core beside the other pods."""
        return {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]} if "OMP_NUM_THREADS" in os.environ else {}

    @staticmethod
    def _no_gpus(task: SerializedTask) -> dict[str, str]:
        """A GPU task's pod on a machine without a usable GPU is told it was given none (SSLFLOW_GPUS_PER_POD=0) and
        trains on the CPU here; on a cluster such a pod fails at once (ssl_models.device.check_gpus)."""
        import torch

        return (
            {"SSLFLOW_GPUS_PER_POD": "0"}
            if "SSLFLOW_GPUS_PER_POD" in task.env and not torch.cuda.is_available()
            else {}
        )

    def _read(self, uri: str) -> bytes | None:
        """The body of the object at ``uri``, or None when there is none."""
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(uri))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def _key(self, uri: str) -> str:
        return uri.removeprefix(f"s3://{self.bucket}/")

    def _put(self, uri: str, literal_map: LiteralMap) -> None:
        body = literal_map.to_flyte_idl().SerializeToString()
        self.s3.put_object(Bucket=self.bucket, Key=self._key(uri), Body=body)
        self.literal_files[uri] = len(body)

    def _get(self, uri: str) -> LiteralMap:
        body = self.s3.get_object(Bucket=self.bucket, Key=self._key(uri))["Body"].read()
        self.literal_files[uri] = len(body)
        message = literals_pb2.LiteralMap()
        message.ParseFromString(body)
        return LiteralMap.from_flyte_idl(message)


@functools.cache
def warm_python() -> WarmPython | None:
    """This test process's warm interpreter server for pods (tests/warm_python.py), started on first use with what
    every pod's environment holds in common; None where it cannot run (pods then start by exec, with a warning)."""
    from images.specs import POD_ENVIRONMENT

    folder = Path(tempfile.mkdtemp(prefix="warm-python-"))  # short: a Unix socket's path has at most 107 bytes
    atexit.register(shutil.rmtree, folder, True)  # after the server stops (atexit runs the later first)
    common = {**POD_ENVIRONMENT, **PodRunner._cpu_share(), "HOME": str(folder), "TMPDIR": str(folder)}
    server = WarmPython(folder, server_environment(common))
    try:
        server.start()
    except WarmPythonUnavailable as error:
        warnings.warn(f"pods start by exec: {error}", stacklevel=2)
        return None
    return server


PSEUDONYM_KEY = "9f" * 32  # the sslflow/pseudonym_key Secret of registered_runner's pods


def registered_runner(work: Path, endpoint: str, mlflow_uri: str, *, s3_endpoint: str | None = None, **options):
    """A PodRunner whose pods get what a user passes with `pyflyte register --env` (README: run on your cluster): the
    tracking server ``mlflow_uri`` and the object store (``s3_endpoint`` as the pods see it, default ``endpoint``), and
    the PSEUDONYM_KEY Secret; ``options`` as PodRunner takes them."""
    registered = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "AWS_ENDPOINT_URL": s3_endpoint or endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    secrets = {("sslflow", "pseudonym_key"): PSEUDONYM_KEY}
    return PodRunner(
        work, s3_endpoint or endpoint, registered=registered, secrets=secrets, setup_endpoint=endpoint, **options
    )


def _parsed(message_type, body: bytes):
    message = message_type()
    message.ParseFromString(body)
    return message


def literals(task, **values) -> LiteralMap:
    """A LiteralMap of ``task``'s inputs from Python ``values`` (for the first node of a chain)."""
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    context = FlyteContextManager.current_context()
    types = task.python_interface.inputs
    return LiteralMap(
        {
            name: TypeEngine.to_literal(context, value, types[name], TypeEngine.to_literal_type(types[name]))
            for name, value in values.items()
        }
    )


def bind(*sources: tuple[LiteralMap, str, str], **literal_values: Literal) -> LiteralMap:
    """A node's inputs: (outputs of an earlier node, its output name, the input name) bindings and literals by name."""
    bound = {input_name: outputs.literals[output_name] for outputs, output_name, input_name in sources}
    return LiteralMap({**bound, **literal_values})


def python_value(literal: Literal, python_type):
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    return TypeEngine.to_python_value(FlyteContextManager.current_context(), literal, python_type)
