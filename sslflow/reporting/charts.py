"""Charts of evaluation results as PNG bytes (matplotlib, Agg backend): label-efficiency curve, shift,
corruptions, and a 2-D UMAP picture of the self-supervised features."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sslflow.ladder import arm_order  # noqa: E402
from sslflow.reporting.tables import methods_in_order  # noqa: E402


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _curve(results: pd.DataFrame, eval_set: str, title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(6, 4))
    for init, probe in methods_in_order(results):
        rows = results[(results["init"] == init) & (results["probe"] == probe) & (results["eval_set"] == eval_set)]
        rows = rows.groupby("label_fraction", as_index=False)["accuracy"].mean()  # over seeds
        axis.plot(
            rows["label_fraction"] * 100,
            rows["accuracy"],
            marker="o",
            linestyle="-" if probe == "finetune" else "--",
            label=f"{init} ({probe})",
        )
    return finish_accuracy_curve(figure, axis, "labelled training images (%)", title)


def finish_accuracy_curve(figure, axis, x_label: str, title: str) -> bytes:
    """The PNG of an accuracy curve against a count of labels: log x axis, labels, grid, legend (every such chart
    alike)."""
    axis.set_xscale("log")
    axis.set_xlabel(x_label)
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def _corruption_chart(results: pd.DataFrame) -> bytes:
    corrupted = results[(results["eval_kind"] == "corruption") & (results["probe"] == "finetune")].copy()
    fraction = corrupted["label_fraction"].max()
    corrupted = corrupted[corrupted["label_fraction"] == fraction]
    corrupted["corruption"] = corrupted["eval_set"].str.split("@").str[0]
    corrupted["severity"] = corrupted["eval_set"].str.split("@").str[1].astype(int)
    names = sorted(corrupted["corruption"].unique())
    figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3), sharey=True)
    for axis, name in zip(axes, names):
        for init in sorted(set(corrupted["init"]), key=arm_order):
            rows = (
                corrupted[(corrupted["corruption"] == name) & (corrupted["init"] == init)]
                .groupby("severity", as_index=False)["accuracy"]
                .mean()
            )
            axis.plot(rows["severity"], rows["accuracy"], marker="o", label=init)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("severity")
        axis.set_xticks([1, 2, 3])
    axes[0].set_ylabel(f"accuracy (fine-tuned, {fraction:g} of labels)")
    axes[-1].legend(fontsize=7)
    return _png(figure)


EMBEDDING_MAX_POINTS = 2000  # UMAP's layout time grows with the points; more add little to a picture
EMBEDDING_MIN_POINTS = 10  # fewer make no picture (UMAP fails on 2 points)


def cache_umap_compilation(umap) -> None:
    """Let numba keep umap-learn's compiled functions on disk and load them in later processes. umap-learn compiles
    them (numba JIT, without numba's cache) in every process that fits: seconds of CPU before even a picture of a
    hundred points, paid by each evaluate and each local pipeline run (benchmarks/umap_cache.py). numba's cache is
    keyed by each function's source and this CPU; it lives in NUMBA_CACHE_DIR when set, else beside umap's sources when
    that folder is writable, else in the user's cache folder. Only umap's own modules, whose functions it calls by
    name."""
    from numba.core.dispatcher import Dispatcher

    for module in (umap.umap_, umap.layouts, umap.spectral, umap.utils, umap.distances, umap.sparse):
        for function in vars(module).values():
            if isinstance(function, Dispatcher) and function.py_func.__module__ == module.__name__:
                function.enable_caching()


def umap_points(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) UMAP coordinates (McInnes et al. 2018, arXiv 1802.03426); the same for the
    same features and seed (single-threaded, numba's random state seeded)."""
    import umap  # here, not at the top: its import (numba, pynndescent) takes seconds the workflows need not pay

    cache_umap_compilation(umap)
    neighbours = max(2, min(15, len(features) - 1))  # UMAP needs 2 <= n_neighbors < N
    reducer = umap.UMAP(
        n_components=2, n_neighbors=neighbours, min_dist=0.1, init="pca", n_epochs=200, random_state=seed, n_jobs=1
    )
    return reducer.fit_transform(np.asarray(features, dtype=np.float32))


def embedding_figure(
    features: np.ndarray,
    labels: np.ndarray,
    sites: np.ndarray,
    title: str,
    *,
    seed: int = 0,
    max_points: int = EMBEDDING_MAX_POINTS,
) -> bytes:
    """Two panels of the same 2-D UMAP of features (N, D): points coloured by label (N,) and by site (N,).

    Over max_points images: a random subset of max_points (drawn with ``seed``) is pictured, and the title says so.
    """
    chosen = np.arange(len(features))
    if len(features) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(len(features), size=max_points, replace=False))
        title = f"{title}, {max_points} of {len(features)} images"
    points, labels, sites = umap_points(features[chosen], seed), np.asarray(labels)[chosen], np.asarray(sites)[chosen]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, values, name in ((axes[0], labels, "label"), (axes[1], sites, "site")):
        for value in sorted(set(values)):
            shown = values == value
            axis.scatter(points[shown, 0], points[shown, 1], s=6, alpha=0.6, label=str(value))
        axis.set_title(f"coloured by {name}", fontsize=9)
        axis.set_xlabel("UMAP 1")
        axis.legend(fontsize=7, markerscale=2, loc="best")
    axes[0].set_ylabel("UMAP 2")
    figure.suptitle(title, fontsize=10)
    return _png(figure)


def report_figures(results: pd.DataFrame) -> dict[str, bytes]:
    return {
        "label_efficiency": _curve(results, "in_domain", "Label efficiency: in-domain test accuracy"),
        "shift_accuracy": _curve(results, "shift", "Under distribution shift: shift-set accuracy"),
        "corruptions": _corruption_chart(results),
    }
