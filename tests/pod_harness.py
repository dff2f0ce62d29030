"""Run Flyte tasks the way a pod on a cluster runs them, for tests: a harness, not a scheduler.

A pod of a Flyte task runs the container command that `pyflyte package` serialized into the task template
(``pyflyte-execute`` / ``pyflyte-map-execute`` with its resolver and loader arguments), in the task's image,
with the environment its pod spec declares, Secrets mounted as files, and its inputs and outputs as literal
files (``inputs.pb``, ``outputs.pb``) in the object store. ``PodRunner.run`` does the same here:

- the template's own ``args``, with ``{{.input}}``, ``{{.outputPrefix}}`` etc. filled in as propeller does;
- a fresh process with an empty working directory, its own HOME and TMPDIR, and only the environment a pod
  has: the image's variables (images/specs.py), the template's, what Flyte injects (object-store endpoint and
  credentials, FLYTE_INTERNAL_*), what the user registers with ``--env`` (``registered``), Secrets as files
  under FLYTE_SECRETS_DEFAULT_DIR; nothing else of this process's environment;
- inputs written to and outputs read from an ``s3://`` prefix on a real (moto) S3 server;
- a map task's subtask with the index propeller gives it (BATCH_JOB_ARRAY_INDEX_VAR_NAME), over the collection
  the previous node returned (plan_ingest's chunk-file references: blob literals, each with its cache hash), its
  outputs gathered into the collection the next node reads, as an ArrayNode does;
- the size of every literal file it writes or reads (``literal_files``), which propeller would refuse over
  ``storage.limits.maxDownloadMBs``.

The code comes from this checkout (PYTHONPATH), as the image's copy of it would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from flyteidl.admin import task_pb2
from flyteidl.core import literals_pb2
from flytekit.models.literals import Literal, LiteralCollection, LiteralMap

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CPU_IMAGE, GPU_IMAGE = "registry.example.com/sslflow-cpu:pod-test", "registry.example.com/sslflow-gpu:pod-test"


@dataclass(frozen=True)
class SerializedTask:
    """What a pod of a task runs: its container args, the env its template declares, the Secrets it requests."""

    name: str
    args: list[str]
    env: dict[str, str]
    secrets: list[tuple[str, str]]


def serialized_tasks(work: Path, package: str = "workflows") -> dict[str, SerializedTask]:
    """Every task of ``package`` as `pyflyte package` serializes it, by name (a map task's subtask by the mapped task's
    name with a ``map:`` prefix)."""
    environment = {**os.environ, "SSLFLOW_CPU_IMAGE": CPU_IMAGE, "SSLFLOW_GPU_IMAGE": GPU_IMAGE}
    archive = work / "package.tgz"
    command = [str(BIN / "pyflyte"), "--pkgs", package, "package", "--image", "registry.example.com/default:0", "--output", str(archive), "--force"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with tarfile.open(archive) as package_file:
        package_file.extractall(work / "package", filter="data")
    tasks = {}
    for path in sorted((work / "package").glob("*_1.pb")):  # ResourceType 1: a task
        spec = task_pb2.TaskSpec()
        spec.ParseFromString(path.read_bytes())
        template = spec.template
        container = template.container if template.HasField("container") else _primary_container(template)
        args = list(container.args)
        name = f"map:{args[args.index('task-name') + 1]}" if args[0] == "pyflyte-map-execute" else template.id.name
        env = {pair.key: pair.value for pair in container.env}
        secrets = [(secret.group, secret.key) for secret in template.security_context.secrets]
        tasks[name] = SerializedTask(name=name, args=args, env=env, secrets=secrets)
    return tasks


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


class PodRunner:
    """Runs serialized tasks as pods against an S3 endpoint; every literal file it wrote or read is in ``literal_files``."""

    def __init__(self, work: Path, endpoint: str, *, bucket: str = "flyte", registered: dict[str, str] | None = None,
                 secrets: dict[tuple[str, str], str] | None = None, setup_endpoint: str | None = None):  # fmt: skip
        """endpoint: the object store as the pods see it; setup_endpoint: as this process sees it (default: the same)."""
        self.work, self.endpoint, self.bucket = work, endpoint, bucket
        self.registered, self.secrets = dict(registered or {}), dict(secrets or {})
        self.execution = f"pod-test-{uuid.uuid4().hex[:8]}"
        self.s3 = boto3.client("s3", endpoint_url=setup_endpoint or endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        if bucket not in {entry["Name"] for entry in self.s3.list_buckets()["Buckets"]}:
            self.s3.create_bucket(Bucket=bucket)
        self.literal_files: dict[str, int] = {}

    def run(self, task: SerializedTask, node: str, inputs: LiteralMap) -> LiteralMap:
        """Run ``task`` as the pod of ``node`` with ``inputs``; its outputs."""
        prefix = f"s3://{self.bucket}/metadata/{self.execution}/{node}"
        self._put(f"{prefix}/inputs.pb", inputs)
        self._start(task, node, prefix, prefix, index=None)
        return self._get(f"{prefix}/outputs.pb")

    def run_map(self, task: SerializedTask, node: str, inputs: LiteralMap, size: int) -> LiteralMap:
        """Run the map task's subtask ``size`` times, as an ArrayNode does: every subtask reads the node's inputs and
        takes the item at its index; the outputs are gathered in index order into one collection per output."""
        prefix = f"s3://{self.bucket}/metadata/{self.execution}/{node}"
        self._put(f"{prefix}/inputs.pb", inputs)
        outputs = []
        for index in range(size):
            self._start(task, f"{node}-{index}", prefix, f"{prefix}/{index}", index=index)
            outputs.append(self._get(f"{prefix}/{index}/outputs.pb"))
        names = outputs[0].literals.keys() if outputs else []
        return LiteralMap({name: Literal(collection=LiteralCollection([o.literals[name] for o in outputs])) for name in names})

    def _start(self, task: SerializedTask, pod: str, input_prefix: str, output_prefix: str, *, index: int | None) -> None:
        folder = self.work / "pods" / pod
        for part in ("home", "tmp", "cwd", "secrets"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        for group, key in task.secrets:
            if (group, key) in self.secrets:
                (folder / "secrets" / group).mkdir(exist_ok=True)
                (folder / "secrets" / group / key).write_text(self.secrets[(group, key)])
        values = {
            "{{.input}}": f"{input_prefix}/inputs.pb", "{{.outputPrefix}}": output_prefix,
            "{{.rawOutputDataPrefix}}": f"s3://{self.bucket}/raw/{self.execution}/{pod}",
            "{{.checkpointOutputPrefix}}": f"s3://{self.bucket}/checkpoints/{self.execution}/{pod}", "{{.prevCheckpointPrefix}}": '""',
        }  # fmt: skip
        args = [values.get(arg, arg) for arg in task.args]
        command = [str(BIN / args[0]), *args[1:]]
        result = subprocess.run(command, cwd=folder / "cwd", env=self._environment(task, folder, index), capture_output=True, text=True, timeout=600)
        (folder / "log.txt").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"pod {pod} ({task.name}) exited with {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}")
        error = self._error(f"{output_prefix}/error.pb")
        if error is not None:  # the task failed: pyflyte-execute writes error.pb (what Flyte shows) and exits 0
            raise RuntimeError(f"pod {pod} ({task.name}) failed: {error}")

    def _environment(self, task: SerializedTask, folder: Path, index: int | None) -> dict[str, str]:
        from images.specs import POD_ENVIRONMENT

        environment = {
            "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(folder / "home"), "TMPDIR": str(folder / "tmp"), "LANG": "C.UTF-8",
            "PYTHONPATH": str(PROJECT_ROOT), **POD_ENVIRONMENT, **task.env,
            "FLYTE_AWS_ENDPOINT": self.endpoint, "FLYTE_AWS_ACCESS_KEY_ID": "testing", "FLYTE_AWS_SECRET_ACCESS_KEY": "testing",
            "FLYTE_INTERNAL_EXECUTION_ID": self.execution, "FLYTE_INTERNAL_EXECUTION_PROJECT": "sslflow",
            "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development", "FLYTE_INTERNAL_TASK_NAME": task.name, "FLYTE_INTERNAL_TASK_VERSION": "pod-test",
            "FLYTE_SECRETS_DEFAULT_DIR": str(folder / "secrets"), **self.registered, **self._no_gpus(task),
        }  # fmt: skip
        if index is not None:
            environment |= {"BATCH_JOB_ARRAY_INDEX_VAR_NAME": "FLYTE_K8S_ARRAY_INDEX", "FLYTE_K8S_ARRAY_INDEX": str(index)}
        return environment

    @staticmethod
    def _no_gpus(task: SerializedTask) -> dict[str, str]:
        """A GPU task's pod on a machine without a usable GPU is told it was given none (SSLFLOW_GPUS_PER_POD=0) and
        trains on the CPU here; on a cluster such a pod fails at once (ssl_models.device.check_gpus)."""
        import torch

        return {"SSLFLOW_GPUS_PER_POD": "0"} if "SSLFLOW_GPUS_PER_POD" in task.env and not torch.cuda.is_available() else {}

    def _error(self, uri: str) -> str | None:
        """The message of the ErrorDocument at ``uri``, or None when the pod wrote none."""
        from flyteidl.core import errors_pb2

        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(uri))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        document = errors_pb2.ErrorDocument()
        document.ParseFromString(body)
        return f"{document.error.code}: {document.error.message}"

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


def literals(task, **values) -> LiteralMap:
    """A LiteralMap of ``task``'s inputs from Python ``values`` (for the first node of a chain)."""
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    context = FlyteContextManager.current_context()
    types = task.python_interface.inputs
    return LiteralMap({name: TypeEngine.to_literal(context, value, types[name], TypeEngine.to_literal_type(types[name])) for name, value in values.items()})


def bind(*sources: tuple[LiteralMap, str, str], **literal_values: Literal) -> LiteralMap:
    """A node's inputs: (outputs of an earlier node, its output name, the input name) bindings and literals by name."""
    bound = {input_name: outputs.literals[output_name] for outputs, output_name, input_name in sources}
    return LiteralMap({**bound, **literal_values})


def python_value(literal: Literal, python_type):
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    return TypeEngine.to_python_value(FlyteContextManager.current_context(), literal, python_type)
