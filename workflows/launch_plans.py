"""Launch plans: weekly retraining on freshly fingerprinted data (each execution fingerprints its sources in a pod),
and the pipeline with multi-node generic pretraining.

    sslflow_weekly_retraining      scheduled_pipeline every Monday 03:00 UTC (CronSchedule; the
                                   schedule's time arrives as the kickoff_time input)
    sslflow_multinode_pretraining  ssl_pipeline_multinode: ssl_pipeline with generic pretraining as a PyTorchJob
                                   of 2 nodes x 8 GPUs (Elastic nnodes=2, nproc_per_node=8)

Register with the schedule switched on (see README, "Run on your cluster"):

    pyflyte --config flyte.config register --activate-launchplans --env MLFLOW_TRACKING_URI=... workflows/

Both run on a cluster only: locally, run workflows/pipeline.py ssl_pipeline instead.
"""

from __future__ import annotations

import types
from datetime import datetime
from typing import Annotated

from flytekit import (
    CronSchedule,
    HashMethod,
    LaunchPlan,
    task,
    workflow,
)

from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import EvaluationConfig, IngestConfig, RegistryConfig
from tasks.pretrain import pretrain_generic
from tasks.shared import Dataset, EncoderCheckpoint, content_hash
from tasks.training_pods import PodWorkers, gpu_task_settings, pretraining_cache
from workflows.pipeline import ssl_pipeline

WEEKLY_CRON = "0 3 * * 1"
MULTINODE_NODES, MULTINODE_POD = 2, PodWorkers(workers=8, gpus=8)  # pods, each 8 GPUs and an Elastic worker per GPU
PIPELINE_DEFAULTS = ssl_pipeline.python_interface.default_inputs_as_kwargs


@workflow
def scheduled_pipeline(
    kickoff_time: datetime,
    generic_source: str = PIPELINE_DEFAULTS["generic_source"],
    domain_source: str = PIPELINE_DEFAULTS["domain_source"],
    shift_source: str = PIPELINE_DEFAULTS["shift_source"],
    generic_ingest: IngestConfig = PIPELINE_DEFAULTS["generic_ingest"],
    domain_ingest: IngestConfig = PIPELINE_DEFAULTS["domain_ingest"],
    shift_ingest: IngestConfig = PIPELINE_DEFAULTS["shift_ingest"],
    encoder_name: str = PIPELINE_DEFAULTS["encoder_name"],
    generic_pretraining: PretrainConfig = PIPELINE_DEFAULTS["generic_pretraining"],
    domain_pretraining: PretrainConfig = PIPELINE_DEFAULTS["domain_pretraining"],
    finetune: FinetuneConfig = PIPELINE_DEFAULTS["finetune"],
    label_fractions: list[float] = PIPELINE_DEFAULTS["label_fractions"],
    seeds: list[int] = PIPELINE_DEFAULTS["seeds"],
    self_train: SelfTrainConfig = PIPELINE_DEFAULTS["self_train"],
    evaluation: EvaluationConfig = PIPELINE_DEFAULTS["evaluation"],
    registry: RegistryConfig = PIPELINE_DEFAULTS["registry"],
) -> str:
    """ssl_pipeline (a subworkflow) with ssl_pipeline's inputs and defaults, started at kickoff_time (the schedule's).

    Each execution fingerprints its sources in its first steps (tasks/ingest.py: source_fingerprint, never cached):
    ingest re-reads a source whose files changed since last week and hits its cache when nothing did.
    """
    return ssl_pipeline(
        generic_source=generic_source,
        domain_source=domain_source,
        shift_source=shift_source,
        generic_ingest=generic_ingest,
        domain_ingest=domain_ingest,
        shift_ingest=shift_ingest,
        encoder_name=encoder_name,
        generic_pretraining=generic_pretraining,
        domain_pretraining=domain_pretraining,
        finetune=finetune,
        label_fractions=label_fractions,
        seeds=seeds,
        self_train=self_train,
        evaluation=evaluation,
        registry=registry,
    )


weekly_retraining = LaunchPlan.get_or_create(
    workflow=scheduled_pipeline,
    name="sslflow_weekly_retraining",
    schedule=CronSchedule(schedule=WEEKLY_CRON, kickoff_time_input_arg="kickoff_time"),
)


# A node override (`pretrain_generic(...).with_overrides(task_config=...)`) cannot do this in flytekit
# 1.16: it replaces the config on the task object itself, so ssl_pipeline's node would turn
# multi-node as well. Hence a second task around the same function, with the cluster's numbers.
@task(
    cache=pretraining_cache("3", pod=MULTINODE_POD, nnodes=MULTINODE_NODES),
    **gpu_task_settings(MULTINODE_POD, nnodes=MULTINODE_NODES),
)
def pretrain_generic_multinode(
    dataset: Dataset, encoder_name: str, config: PretrainConfig, parent_run_id: str
) -> Annotated[EncoderCheckpoint, HashMethod(content_hash)]:
    """pretrain_generic on MULTINODE_NODES pods of MULTINODE_POD (a PyTorchJob); config.batch_size is per GPU."""
    return pretrain_generic.task_function(
        dataset=dataset, encoder_name=encoder_name, config=config, parent_run_id=parent_run_id
    )


def _ssl_pipeline_with(**replaced_tasks):
    """ssl_pipeline's own function compiled again as a new workflow, calling replaced_tasks instead of the
    tasks of the same names: one DAG definition, so the two workflows cannot drift apart."""
    function = ssl_pipeline.function
    clone = types.FunctionType(
        function.__code__, {**function.__globals__, **replaced_tasks}, function.__name__, function.__defaults__
    )
    clone.__annotations__, clone.__kwdefaults__ = dict(function.__annotations__), function.__kwdefaults__
    clone.__module__, clone.__name__, clone.__qualname__ = __name__, "ssl_pipeline_multinode", "ssl_pipeline_multinode"
    clone.__doc__ = (
        "ssl_pipeline with generic pretraining on MULTINODE (pretrain_generic_multinode); every other node the same."
    )
    return workflow(clone)


ssl_pipeline_multinode = _ssl_pipeline_with(pretrain_generic=pretrain_generic_multinode)

multinode_pretraining = LaunchPlan.get_or_create(
    workflow=ssl_pipeline_multinode,
    name="sslflow_multinode_pretraining",
    default_inputs={
        "generic_ingest": IngestConfig(max_images=0),  # all 70,000 Fashion-MNIST images
        "encoder_name": "resnet18",
        "generic_pretraining": PretrainConfig(epochs=100),
    },
)
