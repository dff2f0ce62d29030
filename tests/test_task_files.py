"""Where a stage task writes its checkpoint: in its Flyte execution's working directory, never loose in /tmp."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flytekit import workflow
from flytekit.types.directory import FlyteDirectory
from ingested import write_arrays

from ssl_models.finetuning import FinetuneConfig
from sslflow.data.manifest import MANIFEST_COLUMNS
from sslflow.files import file_sha256
from sslflow.tracking.runs import start_parent_run
from sslflow.training.model_files import save_state_dict
from tasks.finetune import probe_pixels
from tasks.shared import Dataset, FinetunedModel


def _labelled_dataset(directory: Path) -> Dataset:
    """40 random 28x28 images, two classes, half train and half val."""
    count = 40
    labels = ["a", "b"] * (count // 2)
    manifest = pd.DataFrame({column: [""] * count for column in MANIFEST_COLUMNS}).assign(
        sha256=[f"image-{i}" for i in range(count)],
        size_bytes=784,
        width=28,
        height=28,
        mode="L",
        case_id=[f"case-{i}" for i in range(count)],
        case_id_is_proxy=False,
        label=pd.array(labels, dtype="string"),
        split=["train"] * (count // 2) + ["val"] * (count // 2),
    )
    images = np.random.default_rng(0).integers(0, 256, size=(count, 1, 28, 28), dtype=np.uint8)
    sha256 = write_arrays(directory, manifest, images)
    return Dataset(
        directory=FlyteDirectory(str(directory)), name="tiny", num_images=count, content_sha256=sha256, mlflow_run_id=""
    )


@workflow
def probe_only(domain: Dataset, parent_run_id: str) -> FinetunedModel:
    return probe_pixels(
        domain=domain, label_fraction=1.0, config=FinetuneConfig(probe_inverse_l2=[1.0]), parent_run_id=parent_run_id
    )


def test_save_state_dict_writes_a_new_folder_inside_the_given_directory(tmp_path):
    module = torch.nn.Linear(2, 3)
    first, sha256 = save_state_dict(module, tmp_path, "finetune", "classifier.pt")
    second, _ = save_state_dict(module, tmp_path, "finetune", "classifier.pt")
    assert (
        first.parent.parent == tmp_path and first.name == "classifier.pt" and first.parent.name.startswith("finetune-")
    )
    assert first.parent != second.parent
    assert sha256 == file_sha256(first)
    assert torch.load(first, weights_only=True).keys() == module.state_dict().keys()


def test_a_finetune_task_leaves_no_checkpoint_folder_in_the_temp_directory(tmp_path, monkeypatch):
    loose = tmp_path / "tmp"
    loose.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(loose))  # where a bare tempfile.mkdtemp() writes
    domain = _labelled_dataset(tmp_path / "dataset-tiny")
    model = probe_only(domain=domain, parent_run_id=start_parent_run("task-files", {}))
    assert not list(loose.glob("finetune-*"))
    sandbox = Path(os.environ["FLYTE_SDK_LOCAL_SANDBOX"])
    assert list(sandbox.glob("**/finetune-*/classifier.pt")), (
        "the checkpoint is written in the task's working directory"
    )
    assert (
        file_sha256(Path(model.checkpoint.download())) == model.content_sha256
    )  # the returned FlyteFile is the checkpoint
