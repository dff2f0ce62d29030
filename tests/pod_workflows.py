"""Run a compiled workflow node by node as flytepropeller does, each task node a pod (tests/pod_harness.py).

The nodes are those `pyflyte package` compiled (``Package.workflows``), run in an order that respects their
``upstream_node_ids``; each node's inputs are its bindings resolved against the workflow's inputs and the outputs of
the nodes before it. A task node is one pod; a workflow node runs its sub-workflow the same way; an array node (a
map task) one pod per item of its mapped input; a dynamic task's pod returns the sub-workflow it compiled
(DynamicJobSpec: its nodes, their task templates, its output bindings) and that is run here, node by node, in turn.
Nothing is hard-coded about the pipeline: a new node in the workflow is run like the others.

Nodes whose upstream nodes are done run in parallel, as propeller runs them, at most ``parallel_pods`` pods at once
(two by default: a 2-core machine's worth of pod start-ups).

Not done, as propeller would: retries, caching, branch and gate nodes (none in sslflow).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from flyteidl.core import dynamic_job_pb2, literals_pb2
from flyteidl.core import workflow_pb2 as core_workflow_pb2
from flytekit.models.literals import LiteralMap
from pod_harness import Package, PodRunner, SerializedTask

START_NODE = "start-node"  # what a binding to the workflow's own inputs names (or leaves empty)


@dataclass
class WorkflowWalk:
    """Runs workflows of ``package`` through ``runner``; what ran is in ``nodes`` (path -> task name, in order) and each
    task node's inputs and outputs in ``inputs`` and ``outputs`` by path ("n2/n1" is node n1 of node n2's
    sub-workflow)."""

    runner: PodRunner
    package: Package
    parallel_pods: int = 2
    nodes: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, LiteralMap] = field(default_factory=dict)
    outputs: dict[str, LiteralMap] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pods = threading.BoundedSemaphore(self.parallel_pods)

    def run(self, workflow: str, inputs: LiteralMap) -> LiteralMap:
        """Run the workflow named ``workflow`` (e.g. "workflows.pipeline.ssl_pipeline") on ``inputs``: its outputs."""
        template = self.package.workflows[workflow]
        return self._run_nodes(list(template.nodes), list(template.outputs), inputs, self.package.tasks, path="")

    def _run_nodes(
        self, nodes: list, output_bindings: list, inputs: LiteralMap, tasks: dict[str, SerializedTask], path: str
    ) -> LiteralMap:
        """Every node in a thread of its own that waits for its upstream nodes' results, then runs; the results of
        ``output_bindings``."""
        results = {START_NODE: inputs.to_flyte_idl()}
        ids = {node.id for node in nodes}
        done: dict[str, Future] = {}

        def run_after_upstream(node) -> None:
            for upstream in node.upstream_node_ids:
                if upstream in ids:
                    done[upstream].result()  # re-raises an upstream node's failure
            node_inputs = literals_pb2.LiteralMap(literals={b.var: _resolve(b.binding, results) for b in node.inputs})
            results[node.id] = self._run_node(
                node, LiteralMap.from_flyte_idl(node_inputs), tasks, f"{path}{node.id}"
            ).to_flyte_idl()

        ordered = _in_order(nodes)  # every node submitted after its upstream nodes: their futures exist
        with ThreadPoolExecutor(max_workers=max(len(ordered), 1)) as threads:
            for node in ordered:
                done[node.id] = threads.submit(run_after_upstream, node)
            for node in ordered:
                done[node.id].result()
        return LiteralMap.from_flyte_idl(
            literals_pb2.LiteralMap(literals={b.var: _resolve(b.binding, results) for b in output_bindings})
        )

    def _run_node(
        self, node: core_workflow_pb2.Node, inputs: LiteralMap, tasks: dict[str, SerializedTask], path: str
    ) -> LiteralMap:
        target = node.WhichOneof("target")
        if target == "workflow_node":
            template = self.package.workflows[node.workflow_node.sub_workflow_ref.name]
            return self._run_nodes(list(template.nodes), list(template.outputs), inputs, tasks, f"{path}/")
        if target == "array_node":
            task = tasks[node.array_node.node.task_node.reference_id.name]
            size = len(next(iter(inputs.literals.values())).collection.literals)
            self.nodes[path], self.inputs[path] = task.name, inputs
            with self._pods:
                self.outputs[path] = self.runner.run_map(task, path.replace("/", "-"), inputs, size)
            return self.outputs[path]
        assert target == "task_node", f"node {path} is a {target} node: the walk runs task, workflow and array nodes"
        task = tasks[node.task_node.reference_id.name]
        self.nodes[path], self.inputs[path] = task.name, inputs
        with self._pods:
            result = self.runner.execute(task, path.replace("/", "-"), inputs)
        if isinstance(result, dynamic_job_pb2.DynamicJobSpec):  # the pod compiled a sub-workflow: run it
            result = self._run_dynamic(result, tasks, path)
        self.outputs[path] = result
        return result

    def _run_dynamic(
        self, spec: dynamic_job_pb2.DynamicJobSpec, tasks: dict[str, SerializedTask], path: str
    ) -> LiteralMap:
        """The nodes of a dynamic task's sub-workflow; their tasks are the templates the pod compiled (fast-registered
        ones download the same code archive), and its outputs the dynamic node's."""
        compiled = {template.id.name: SerializedTask.from_template(template) for template in spec.tasks}
        return self._run_nodes(list(spec.nodes), list(spec.outputs), LiteralMap({}), {**tasks, **compiled}, f"{path}/")


def _in_order(nodes: list) -> list:
    """``nodes`` with every node after the nodes it names upstream (a topological order, stable otherwise)."""
    ids = {node.id for node in nodes}
    done: set[str] = set()
    ordered, waiting = [], list(nodes)
    while waiting:
        ready = [node for node in waiting if all(up in done or up not in ids for up in node.upstream_node_ids)]
        assert ready, f"a cycle among nodes {[node.id for node in waiting]}"
        ordered.extend(ready)
        done.update(node.id for node in ready)
        waiting = [node for node in waiting if node.id not in done]
    return ordered


def _resolve(binding: literals_pb2.BindingData, results: dict[str, literals_pb2.LiteralMap]) -> literals_pb2.Literal:
    """The literal a binding names: a constant, a node's output (a promise), or a collection or map of bindings."""
    kind = binding.WhichOneof("value")
    if kind == "scalar":
        return literals_pb2.Literal(scalar=binding.scalar)
    if kind == "collection":
        items = [_resolve(item, results) for item in binding.collection.bindings]
        return literals_pb2.Literal(collection=literals_pb2.LiteralCollection(literals=items))
    if kind == "map":
        entries = {key: _resolve(item, results) for key, item in binding.map.bindings.items()}
        return literals_pb2.Literal(map=literals_pb2.LiteralMap(literals=entries))
    assert kind == "promise" and not binding.promise.attr_path, (
        f"the walk resolves constants, promises and collections, not {kind}"
    )
    return results[binding.promise.node_id or START_NODE].literals[binding.promise.var]
