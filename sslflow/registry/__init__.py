"""The MLflow model registry: the promotion gate (``gate``, pure), what is served (``serving``),
aliases, undo and rollback (``aliases``), and registering a selected model (``registration``).

Aliases only (``challenger``, ``champion``, ``previous_champion``), never the deprecated stages.
"""
