"""ssl_pipeline: ingest -> validate -> generic pretraining -> {domain pretraining, with case pairs} -> fine-tune
(SSL vs floors) -> self-train -> evaluate -> register.

Defaults mirror the MICLe recipe on data that ships in packages: generic pretraining on Fashion-MNIST,
domain pretraining on MNIST-5k (unlabelled; MICLe with PROXY cases from pixel neighbours, as MNIST has no
patients, and its control, the same method on the same images with the same schedule and no case pairs),
fine-tuning on 1/10/100% of MNIST labels, testing on held-out MNIST and on optdigits (a real shift).

    pyflyte run workflows/pipeline.py ssl_pipeline
    pyflyte run workflows/pipeline.py ssl_pipeline --domain_source ./my_scans --shift_source ./other_site
    pyflyte run workflows/pipeline.py ssl_pipeline --generic_pretraining '{"method": "moco", "epochs": 4}'

The method (SimCLR, MoCo v2, BYOL, DINO, distillation: ssl_models.methods.METHODS) is the generic pretraining
config's ``method``; the domain rungs continue the method of the encoder they start from
(sslflow.ladder.continued_method). The ladder's arms are named after it: MoCo v2's are "moco", "moco+domain",
"moco+micle".
"""

from __future__ import annotations

from flytekit import workflow

import workflows.refusals  # noqa: F401  (refused inputs print as one message: see the module)
from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import EvaluationConfig, IngestConfig, RegistryConfig, ValidationConfig
from tasks.evaluate import evaluate
from tasks.finetune import finetune_all
from tasks.ingest import source_fingerprint
from tasks.pipeline_run import report, start_pipeline_run
from tasks.pretrain import pretrain_case_pairs, pretrain_domain, pretrain_generic
from tasks.register import register
from tasks.self_train import self_train as self_train_task
from tasks.store import tracking_store
from tasks.validate import validate
from workflows.ingest import ingest

DEFAULT_LABEL_FRACTIONS = [0.01, 0.1, 1.0]
DEFAULT_SEEDS = [0]  # fine-tuning seeds; benchmarks/quality.py runs 3 for intervals
# The defaults fit `make run` in 600 s on 2 CPU cores (README, "Time budget"); larger ones: launch plans, quality.py.


def _ingested(source, fingerprint, ingest_config, validation, label_fractions, run_id):
    """The nodes of one source in the DAG: ingest (cached on the source's fingerprint), then validate. A helper that
    builds nodes when the workflow is compiled, not a sub-workflow: the DAG is the same as writing them out."""
    dataset = ingest(source=source, fingerprint=fingerprint, config=ingest_config, parent_run_id=run_id)
    return validate(dataset=dataset, config=validation, label_fractions=label_fractions, parent_run_id=run_id)


def _domain_rungs(domain, generic_encoder, domain_pretraining, run_id) -> list:
    """The domain and case-pairs pretraining nodes, both continuing the generic rung's encoder (sslflow.ladder.LADDER;
    compiled into the DAG like _ingested). The generic rung's node stays in ssl_pipeline itself, where the multinode
    plan (workflows/launch_plans.py) swaps its task."""
    continued = {"dataset": domain, "initial": generic_encoder, "config": domain_pretraining, "parent_run_id": run_id}
    return [pretrain_domain(**continued), pretrain_case_pairs(**continued)]


@workflow
def ssl_pipeline(
    generic_source: str = "fashion-mnist",
    domain_source: str = "mnist-5k",
    shift_source: str = "optdigits",
    generic_ingest: IngestConfig = IngestConfig(max_images=6000),
    domain_ingest: IngestConfig = IngestConfig(proxy_cases=True),
    shift_ingest: IngestConfig = IngestConfig(all_test=True),
    encoder_name: str = "small_cnn",
    generic_pretraining: PretrainConfig = PretrainConfig(epochs=4),  # the generic rung; its method names the arms
    domain_pretraining: PretrainConfig = PretrainConfig(epochs=4),  # both domain rungs'; method: the generic rung's
    # every arm alike: 200+ steps, early stopping on the validation fold
    finetune: FinetuneConfig = FinetuneConfig(epochs=5, min_steps=200),
    label_fractions: list[float] = DEFAULT_LABEL_FRACTIONS,
    seeds: list[int] = DEFAULT_SEEDS,
    self_train: SelfTrainConfig = SelfTrainConfig(),
    evaluation: EvaluationConfig = EvaluationConfig(),  # the corruption suite beside the in-domain and shift sets
    registry: RegistryConfig = RegistryConfig(),
) -> str:
    # the first steps, in pods: services checked, each source fingerprinted (the cache key of its ingest)
    generic_fingerprint = source_fingerprint(source=generic_source)
    domain_fingerprint = source_fingerprint(source=domain_source)
    shift_fingerprint = source_fingerprint(source=shift_source)
    run_id = start_pipeline_run(
        tracking_store=tracking_store(),
        generic_source=generic_source,
        domain_source=domain_source,
        shift_source=shift_source,
        source_fingerprints=[generic_fingerprint, domain_fingerprint, shift_fingerprint],
        encoder_name=encoder_name,
        generic_pretraining=generic_pretraining,
        domain_pretraining=domain_pretraining,
        finetune=finetune,
        label_fractions=label_fractions,
        seeds=seeds,
        self_train=self_train,
        registry=registry,
    )
    generic = _ingested(generic_source, generic_fingerprint, generic_ingest, ValidationConfig(), [], run_id)
    domain = _ingested(domain_source, domain_fingerprint, domain_ingest, ValidationConfig(), label_fractions, run_id)
    shift = _ingested(shift_source, shift_fingerprint, shift_ingest, ValidationConfig(require_labels=True), [], run_id)
    generic_encoder = pretrain_generic(
        dataset=generic, encoder_name=encoder_name, config=generic_pretraining, parent_run_id=run_id
    )
    encoders = [generic_encoder, *_domain_rungs(domain, generic_encoder, domain_pretraining, run_id)]  # bottom first
    models = finetune_all(
        domain=domain,
        encoders=encoders,
        label_fractions=label_fractions,
        seeds=seeds,
        config=finetune,
        parent_run_id=run_id,
    )
    models = self_train_task(
        models=models, domain=domain, encoder=encoders[-1], config=self_train, parent_run_id=run_id
    )
    results = evaluate(models=models, in_domain=domain, shift=shift, parent_run_id=run_id, config=evaluation)
    registration = register(
        models=models, in_domain=domain, shift=shift, config=registry, domain_source=domain_source, parent_run_id=run_id
    )
    return report(results=results, registration=registration, parent_run_id=run_id)
