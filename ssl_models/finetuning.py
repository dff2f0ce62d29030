"""Supervised fine-tuning of an encoder + linear classifier on few labelled images, with the same small search
(learning rate x weight decay) and early stopping on validation for every initialisation; or the linear probe.

The labelled images are held in memory (on the GPU when they fit); each step augments its batch on the device.

Read top down: ``FinetuneConfig``; ``finetune`` (the probe or the search, ``_best_of_search``); ``_linear_probe``;
``_finetune_one_setting`` (one point of the search), which calls ``_train_head_only`` (LP-FT's first phase) and
``_train_within_budget`` (the steps, validation, early stopping) and ``_close_budget``; ``validation_scores``."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import FINETUNE_AUGMENT, AugmentConfig, augment
from ssl_models.data import gather, place_images
from ssl_models.device import apply_in_batches, autocast, pick_device
from ssl_models.heads import Classifier
from ssl_models.loop import BestOnValidation, EpochTotals, epoch_count, optimizer_step, steps_per_epoch
from ssl_models.optim import warmup_constant
from ssl_models.probe import DEFAULT_INVERSE_L2, fit_linear_probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning of encoder + linear classifier, with the same small search for every initialisation.

    linear_probe: freeze the encoder and fit only the linear layer on standardised features of the
    un-augmented images, a converged multinomial logistic regression whose inverse L2 strength is
    chosen from ``probe_inverse_l2`` on the validation images (ssl_models/probe.py).

    learning_rates x weight_decays: the search. Full fine-tuning trains once per pair (same seed: same head, batch
    order and augmentations) and keeps the pair whose best validation score (accuracy, then cross-entropy) is
    highest. Every arm, scratch and each pretrained encoder, gets the same grid on its own validation fold.

    epochs, min_steps: the step budget is ``epochs`` epochs of the labelled images, raised (and the log says so) to
    at least ``min_steps`` optimiser steps, for label fractions so small that an epoch is one step. It depends only
    on the number of labels, so every arm at a label fraction has the same budget. The learning rate warms up over
    the first tenth of the budget (at most one epoch) and then stays constant, so that the run stops where
    validation stops improving (``patience``), not where a decay ends; a run whose best step is the last
    evaluation of its budget says so (``best_at_budget_end``: the budget was too short for it).

    eval_every, patience: the validation score every this many steps and at the last; this many evaluations in a
    row without a better one stop the run, and the weights of the best evaluation are returned (0: train the whole
    budget, still return the best).

    head_warmup_steps: first train the new linear layer alone on frozen features, then everything (LP-FT, Kumar et
    al., 2022, arXiv 2202.10054), for every initialisation alike; 0 (the default): no warm-up for any arm.

    seed: the label subset, head initialisation, batch order and augmentations (the pipeline sets it
    to each of its ``seeds`` in turn).
    """

    epochs: int = 10
    min_steps: int = 0
    eval_every: int = 20
    patience: int = 3
    batch_size: int = 64
    learning_rates: list[float] = field(default_factory=lambda: [1e-3])
    weight_decays: list[float] = field(default_factory=lambda: [1e-4])
    head_warmup_steps: int = 0
    probe_inverse_l2: list[float] = field(default_factory=lambda: list(DEFAULT_INVERSE_L2))
    linear_probe: bool = False
    seed: int = 0
    augment: AugmentConfig = field(default_factory=lambda: FINETUNE_AUGMENT)

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.patience < 0:
            raise ValueError(
                f"FinetuneConfig needs eval_every >= 1 step and patience >= 0 evaluations, got {self.eval_every} and "
                f"{self.patience}"
            )
        if not self.learning_rates or not self.weight_decays:
            raise ValueError(
                "FinetuneConfig's search needs at least one learning rate and one weight decay (learning_rates, "
                "weight_decays)"
            )


def finetune(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    config: FinetuneConfig,
    *,
    validation: tuple[torch.Tensor, np.ndarray] | None = None,
) -> tuple[Classifier, list[dict]]:
    """Train a linear classifier on ``encoder`` (and the encoder too unless ``linear_probe``).

    Args:
        images: (N, C, H, W) uint8 labelled training images.
        labels: (N,) int class indices in [0, num_classes).
        validation: (images (M, C, H, W) uint8, labels (M,)); the linear probe chooses its L2 strength on it,
            full fine-tuning chooses among its search (learning_rates x weight_decays), stops early on it and returns
            its best weights (FinetuneConfig).

    Returns:
        The trained Classifier (on the host, eval mode) and its records (_train_within_budget): one per
        ``eval_every`` steps with step, loss, accuracy (and val_accuracy, val_loss), the last with the stopping step,
        the best val accuracy, the chosen learning_rate and weight_decay, final_train_accuracy (the returned model on
        its un-augmented training images) and ``search`` (each pair's best_val_accuracy, best_val_loss, best_step);
        the linear probe: one dict, also converged, iterations, inverse_l2.
    """
    if len(labels) != images.shape[0] or len(labels) == 0:
        raise ValueError(
            f"need one label per image and at least one image; got {len(labels)} labels, {images.shape[0]} images"
        )
    if config.linear_probe:
        if validation is None:
            raise ValueError(
                "the linear probe chooses its regularisation on validation data: pass validation=(images, labels)"
            )
        torch.manual_seed(config.seed)
        return _linear_probe(Classifier(encoder, num_classes).to(pick_device()), images, labels, validation, config)
    grid = [(rate, decay) for rate in config.learning_rates for decay in config.weight_decays]
    if validation is None and len(grid) > 1:
        raise ValueError(
            f"the fine-tuning search ({len(grid)} settings) chooses on validation data: pass validation=(images, "
            "labels)"
        )
    runs = [
        _finetune_one_setting(encoder, images, labels, num_classes, config, rate, decay, validation)
        for rate, decay in grid
    ]
    model, history = _best_of_search(runs)
    if len(grid) > 1:
        log.info(
            "finetune: chose learning_rate %g, weight_decay %g on validation among %d settings",
            history[-1]["learning_rate"],
            history[-1]["weight_decay"],
            len(grid),
        )
    model.eval()
    return model.cpu(), history


def _best_of_search(runs: list[tuple[Classifier, list[dict]]]) -> tuple[Classifier, list[dict]]:
    """The (model, records) of the search point with the best validation accuracy, then the lower validation loss;
    its last record gets ``search``: every point's learning_rate, weight_decay, best_val_accuracy, best_val_loss and
    best_step."""
    model, history = max(
        runs, key=lambda run: (run[1][-1].get("best_val_accuracy", 0.0), -run[1][-1].get("best_val_loss", 0.0))
    )
    history[-1]["search"] = [
        {
            key: run[1][-1][key]
            for key in ("learning_rate", "weight_decay", "best_val_accuracy", "best_val_loss", "best_step")
            if key in run[1][-1]
        }
        for run in runs
    ]
    return model, history


def _linear_probe(model: Classifier, images: torch.Tensor, labels: np.ndarray, validation, config: FinetuneConfig):
    """The linear evaluation protocol: frozen encoder, features computed once, a converged logistic regression."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)

    def features(pixels: torch.Tensor) -> np.ndarray:
        return apply_in_batches(model.encoder, pixels, config.augment).cpu().double().numpy()

    fit = fit_linear_probe(
        features(images),
        np.asarray(labels),
        features(validation[0]),
        np.asarray(validation[1]),
        model.linear.out_features,
        inverse_l2_grid=config.probe_inverse_l2,
    )
    with torch.no_grad():
        model.linear.weight.copy_(fit.weight)
        model.linear.bias.copy_(fit.bias)
    record = {
        "epoch": 0,
        "loss": fit.train_loss,
        "accuracy": fit.train_accuracy,
        "converged": fit.converged,
        "iterations": fit.iterations,
        "stop_reason": fit.stop_reason,
        "inverse_l2": fit.inverse_l2,
        "final_train_accuracy": fit.train_accuracy,
    }
    log.info(
        "linear probe: C=%g chosen on validation, %s (%s) after %d L-BFGS iterations, train loss %.4f accuracy %.3f",
        fit.inverse_l2,
        "converged" if fit.converged else "NOT converged",
        fit.stop_reason,
        fit.iterations,
        fit.train_loss,
        fit.train_accuracy,
    )
    model.eval()
    return model.cpu(), [record]


def _finetune_one_setting(
    encoder, images, labels, num_classes, config: FinetuneConfig, learning_rate: float, weight_decay: float, validation
):
    """One point of the search: a copy of ``encoder`` with a new head, trained within the budget at these settings,
    from the same seed as every other point. (model on its device, records)."""
    device = pick_device()
    torch.manual_seed(config.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device)
    steps = steps_per_epoch(len(labels), config.batch_size)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    stored = place_images(images, device)
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)
    if config.head_warmup_steps:
        _train_head_only(model, stored, targets, config, learning_rate, generator, rng, device)
    run = _FinetuneRun(model, stored, targets, generator, rng, device, validation, learning_rate, weight_decay)
    history = _train_within_budget(run, config, steps, _epochs(config, steps))
    history[-1].update(learning_rate=learning_rate, weight_decay=weight_decay)
    history[-1]["final_train_accuracy"] = validation_scores(model, images, labels, config.augment)[0]
    return model, history


def _train_head_only(
    model: Classifier, stored, targets, config: FinetuneConfig, learning_rate: float, generator, rng, device
) -> None:
    """LP phase of LP-FT: ``config.head_warmup_steps`` AdamW steps (at 10 x ``learning_rate``) on the linear layer,
    encoder frozen in eval mode, on batches of ``config.batch_size`` labelled images in ``config.augment``'s view.
    stored (N, C, H, W) uint8 and targets (N,) int64 on ``device``."""
    optimizer = torch.optim.AdamW(model.linear.parameters(), lr=10 * learning_rate)
    model.encoder.eval()
    for _ in range(config.head_warmup_steps):
        batch = rng.choice(len(targets), size=min(config.batch_size, len(targets)), replace=False)
        views = augment(gather(stored, batch, device), config.augment, generator)
        with torch.no_grad(), autocast(device):
            features = model.encoder(views)
        loss = F.cross_entropy(model.linear(features.float()), targets[torch.from_numpy(batch).to(device)])
        optimizer_step(loss, optimizer)


@dataclass
class _FinetuneRun:
    """What the full fine-tuning phase works on: the model, the labelled images (N, C, H, W) uint8 and their class
    indices (N,) on ``device``, the augmentation generator, the batch-order rng, the (images, labels) validation set
    and the search point's learning rate and weight decay."""

    model: Classifier
    stored: torch.Tensor
    targets: torch.Tensor
    generator: torch.Generator
    rng: np.random.Generator
    device: torch.device
    validation: tuple[torch.Tensor, np.ndarray] | None
    learning_rate: float
    weight_decay: float


def _epochs(config: FinetuneConfig, steps: int) -> int:
    """config.epochs, raised to reach config.min_steps optimiser steps; never silently."""
    epochs = epoch_count(config.epochs, config.min_steps, steps)
    if epochs != config.epochs:
        log.info(
            "finetune: min_steps=%d raises epochs from %d to %d (%d steps per epoch)",
            config.min_steps,
            config.epochs,
            epochs,
            steps,
        )
    return epochs


def _train_within_budget(run: _FinetuneRun, config: FinetuneConfig, steps: int, epochs: int) -> list[dict]:
    """The budget, ``epochs`` x ``steps`` AdamW steps on encoder + linear layer (warm-up, then constant), with the
    validation score every ``config.eval_every`` steps and at the last; ``config.patience`` evaluations without a better
    one stop the run and the best weights are restored (ssl_models.loop.BestOnValidation). Without validation: the
    whole budget.

    Returns one record per ``eval_every`` steps (and the last): epoch, step, loss and accuracy of the training batches
    since the previous record, val_accuracy and val_loss (with validation); the last also has budget_steps,
    stopped_step, and with validation best_step, best_val_accuracy, best_val_loss, evaluations, early_stopped and
    best_at_budget_end.
    """
    model, budget = run.model, steps * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.learning_rate, weight_decay=run.weight_decay)
    schedule = warmup_constant(optimizer, min(steps, max(1, budget // 10)))
    stopping, history, step, stop = BestOnValidation(config.patience), [], 0, False
    totals = EpochTotals()
    for epoch in range(epochs):
        model.train()
        order = run.rng.permutation(len(run.targets))
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            views = augment(gather(run.stored, batch, run.device), config.augment, run.generator)
            batch_targets = run.targets[torch.from_numpy(batch).to(run.device)]
            with autocast(run.device):
                logits = model(views)
            loss = F.cross_entropy(logits.float(), batch_targets)
            optimizer_step(loss, optimizer, schedule)
            totals.add(loss, len(batch), logits, batch_targets)
            step += 1
            if step % config.eval_every == 0 or step == budget:
                history.append({"epoch": epoch, "step": step, "loss": totals.mean_loss, "accuracy": totals.accuracy})
                totals = EpochTotals()
                if run.validation is not None:
                    history[-1]["val_accuracy"], history[-1]["val_loss"] = validation_scores(
                        model, *run.validation, config.augment
                    )
                    stop = stopping.update(step, history[-1]["val_accuracy"], model, history[-1]["val_loss"])
                    model.train()
                if stop:
                    break
        if stop:
            break
    return _close_budget(run, history, stopping, budget, step)


def _close_budget(
    run: _FinetuneRun, history: list[dict], stopping: BestOnValidation, budget: int, step: int
) -> list[dict]:
    """Restore the best weights on validation (if any) and write the run's summary into its last record."""
    history[-1].update(budget_steps=budget, stopped_step=step)
    if run.validation is not None:
        stopping.restore(run.model)
        at_end = stopping.best_step == budget
        history[-1].update(stopping.record(), early_stopped=step < budget, best_at_budget_end=at_end)
        log.info(
            "finetune (lr %g, wd %g): best val accuracy %.4f at step %d of %d (stopped at step %d)%s",
            run.learning_rate,
            run.weight_decay,
            stopping.best_accuracy,
            stopping.best_step,
            budget,
            step,
            ": still improving at the end of its budget" if at_end else "",
        )
    else:
        log.info(
            "finetune: %d steps, train loss %.4f accuracy %.3f (no validation: no early stopping)",
            step,
            history[-1]["loss"],
            history[-1]["accuracy"],
        )
    return history


def validation_scores(
    model: nn.Module, images: torch.Tensor, labels: np.ndarray, view: AugmentConfig
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` (left in eval mode) on un-augmented images (M, C, H, W) uint8 with
    class indices (M,)."""
    logits = apply_in_batches(model, images, view).float()
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=logits.device)
    return float((logits.argmax(1) == targets).float().mean()), float(F.cross_entropy(logits, targets))
