"""Pure PyTorch self-supervised learning engine for sslflow.

Nothing in this package imports flytekit or mlflow: it runs bare on a GPU box.
Modules: ``augment`` (per-sample GPU augmentation), ``encoders``, ``heads``,
``losses`` (NT-Xent), ``micle`` (case pair sampling for MICLe and SimCLR), ``distributed``,
``loop`` (step and epoch arithmetic every loop shares), ``train`` (contrastive pretraining and
fine-tuning loops), ``evaluate``.
"""
