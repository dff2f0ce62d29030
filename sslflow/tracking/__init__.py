"""MLflow tracking: where the store is (``store``), a server that does not answer (``server``),
what code produced a result (``provenance``), the pipeline's parent and stage runs (``runs``)."""
