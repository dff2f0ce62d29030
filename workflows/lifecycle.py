"""Model lifecycle commands on the MLflow registry (the promotion gate itself runs in ssl_pipeline's register).

    pyflyte run workflows/lifecycle.py rollback                        # champion <- previous_champion
    pyflyte run workflows/lifecycle.py rollback --model_name my_model
    pyflyte --config flyte.config run --remote --env MLFLOW_TRACKING_URI=http://mlflow:5000 workflows/lifecycle.py rollback
"""

from __future__ import annotations

from flytekit import workflow

import workflows.refusals  # noqa: F401  (refused inputs print as one message: see the module)

from tasks.register import rollback_champion


@workflow
def rollback(model_name: str = "sslflow") -> str:
    """Undo the last promotion: champion goes back to previous_champion (one step per run)."""
    return rollback_champion(model_name=model_name)
