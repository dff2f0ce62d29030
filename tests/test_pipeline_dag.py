"""The DAG's shape (workflows/pipeline.py), read from the compiled workflow without running it."""

from types import SimpleNamespace

import tasks.pretrain
from sslflow.ladder import LADDER, RUNGS
from workflows.pipeline import ssl_pipeline


def _bindings() -> dict[str, dict[str, tuple[str, str]]]:
    """{task name: {input: (producing node id, output or workflow input name)}}."""
    nodes = {}
    for node in ssl_pipeline.nodes:
        name = getattr(node.flyte_entity, "name", "").rsplit(".", 1)[-1]
        nodes[name] = {
            b.var: (b.binding.promise.node_id, b.binding.promise.var)
            for b in node.bindings
            if b.binding.promise is not None
        }
        for b in node.bindings:  # a list of promises (finetune_all's encoders): {input: [(node id, output), ...]}
            if b.binding.collection is not None:
                nodes[name][b.var] = [
                    (item.promise.node_id, item.promise.var) for item in b.binding.collection.bindings
                ]
    return nodes


def test_domain_rung_is_the_case_pairs_control():
    """Same images, initial encoder and config as the case pairs rung: the arms differ only in the pairing rule."""
    nodes = _bindings()
    assert nodes["pretrain_domain"] == nodes["pretrain_case_pairs"]
    generic_node = next(node.id for node in ssl_pipeline.nodes if node.flyte_entity.name.endswith(".pretrain_generic"))
    assert nodes["pretrain_case_pairs"]["initial"][0] == generic_node
    by_name = {node.flyte_entity.name.rsplit(".", 1)[-1]: node.id for node in ssl_pipeline.nodes}
    ladder_nodes = [by_name[rung.stage] for rung in LADDER]  # bottom rung first, as finetune_all expects
    assert [node_id for node_id, _ in nodes["finetune_all"]["encoders"]] == ladder_nodes


def test_domain_rung_uses_no_case_pairs(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.pretrain, "_pretrain", lambda *args, **kwargs: calls.append((args, kwargs)))
    initial = SimpleNamespace(content_sha256="abc", mlflow_run_id="r", encoder_name="small_cnn")
    tasks.pretrain.pretrain_domain.task_function(dataset=None, initial=initial, config=None, parent_run_id="")
    tasks.pretrain.pretrain_case_pairs.task_function(dataset=None, initial=initial, config=None, parent_run_id="")
    (domain_args, domain_kwargs), (case_pairs_args, case_pairs_kwargs) = calls
    assert domain_args[0] is RUNGS["domain"] and not domain_args[0].case_pairs
    assert case_pairs_args[0] is RUNGS["case_pairs"] and case_pairs_args[0].case_pairs
    assert domain_args[1:] == case_pairs_args[1:] and domain_kwargs["lineage"] == case_pairs_kwargs["lineage"]


def test_only_pretraining_launches_elastic_workers():
    """Single-GPU tasks run in the task's own process: a one-worker Elastic launch per fine-tuning task cost
    ~15-20 s locally (worker start, re-imports, rendezvous) for each of finetune_all's tasks."""
    from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask

    import tasks.finetune
    import tasks.self_train

    single = (
        tasks.finetune.finetune_pretrained,
        tasks.finetune.finetune_scratch,
        tasks.finetune.probe_pixels,
        tasks.self_train.self_train,
    )
    assert not any(isinstance(task, PytorchElasticFunctionTask) for task in single)
    assert all(task.resources.requests.gpu == "1" for task in single)
    pretraining = (tasks.pretrain.pretrain_generic, tasks.pretrain.pretrain_domain, tasks.pretrain.pretrain_case_pairs)
    assert all(isinstance(task, PytorchElasticFunctionTask) for task in pretraining)
