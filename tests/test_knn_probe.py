"""The kNN probe beside linear and fine-tune (sslflow.evaluation.knn_probe_row): its bank is the model's own
labelled subset (same fraction and seed), its score the in-domain test accuracy."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from sslflow.evaluation import KNN_COLUMNS, knn_probe_row


class _Brightness(torch.nn.Module):
    """Features (mean brightness, 1): separates dark from bright images. (B, C, H, W) -> (B, 2)."""

    feature_dim = 2

    def forward(self, images):
        return torch.stack([images.mean((1, 2, 3)), torch.ones(len(images))], dim=1)


def test_knn_probe_uses_the_models_labelled_subset_and_scores_the_test_images():
    labels = np.array(["dark", "bright"] * 50)
    images = np.where(labels == "bright", 255, 0).astype(np.uint8)[:, None, None, None] * np.ones(
        (1, 1, 4, 4), np.uint8
    )
    manifest = pd.DataFrame({"split": "train", "label": labels, "site": "a"})
    model = SimpleNamespace(init="moco+micle", label_fraction=0.1, seed=0, class_names=["bright", "dark"])
    test_images, test_labels = images[:20], (labels[:20] == "dark").astype(np.int64)
    row = knn_probe_row(_Brightness(), model, (manifest, images), (test_images, test_labels), name="toy")
    assert set(row) == set(KNN_COLUMNS) and row["probe"] == "knn" and row["num_labels"] == 10  # 10% of 100, 5 per class
    assert row["accuracy"] == 1.0
    flipped = knn_probe_row(_Brightness(), model, (manifest, images), (test_images, 1 - test_labels), name="toy")
    assert flipped["accuracy"] == 0.0
