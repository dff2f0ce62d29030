"""Pure PyTorch self-supervised learning engine for sslflow.

Nothing in this package imports flytekit or mlflow: it runs bare on a GPU box.
Modules: ``augment`` (per-sample GPU augmentation), ``encoders``, ``heads``,
``losses`` (NT-Xent), ``micle`` (case-aware pair sampling), ``distributed``,
``train`` (contrastive pretraining and fine-tuning loops), ``evaluate``.
"""
