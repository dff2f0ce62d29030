"""Model lifecycle commands on the MLflow registry (the promotion gate itself runs in ssl_pipeline's register).

pyflyte run workflows/lifecycle.py rollback                        # the demo's model: champion <- previous_champion
pyflyte run workflows/lifecycle.py rollback --model_name sslflow-scans-1a2b3c4d   # a run's model (its summary names it)
pyflyte --config flyte.config run --remote --env MLFLOW_TRACKING_URI=http://mlflow:5000 workflows/lifecycle.py rollback
"""

from __future__ import annotations

from flytekit import workflow

import workflows.refusals  # noqa: F401  (refused inputs print as one message: see the module)
from sslflow.registry.names import default_model_name
from tasks.register import rollback_champion

DEMO_MODEL_NAME = default_model_name("mnist-5k")  # ssl_pipeline's default domain source


@workflow
def rollback(model_name: str = DEMO_MODEL_NAME) -> str:
    """Undo the last promotion: champion goes back to previous_champion (one step per run)."""
    return rollback_champion(model_name=model_name)
