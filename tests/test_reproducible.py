"""Same inputs and seed, same weights: two processes train the same tiny run and compare bitwise (issue 12).

Each process first draws a different amount from torch's global generator, as a pipeline process does
when other tasks ran (or were cache hits) before this one: the weights must not depend on it.
"""

import subprocess
import sys
from pathlib import Path

import torch

TRAIN_ONCE = """
import sys
import numpy as np
import torch
from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.finetuning import FinetuneConfig, finetune
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from sslflow.training.model_files import initial_encoder

torch.rand(int(sys.argv[2]))  # what ran before in this process
images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (48, 1, 16, 16), dtype=np.uint8))
labels = np.arange(48) % 2
view = AugmentConfig(output_size=16)
encoder = initial_encoder(None, "small_cnn", 1, 16, seed=3)
pairs = InMemoryPairs(images, list(range(48)), seed=3)
pretrain_contrastive(encoder, pairs, PretrainConfig(epochs=1, batch_size=16, seed=3, augment=view))
scratch = initial_encoder(None, "small_cnn", 1, 16, seed=3)
warm = FinetuneConfig(epochs=1, batch_size=16, head_warmup_steps=2, seed=3, augment=view)
cold = FinetuneConfig(epochs=1, batch_size=16, head_warmup_steps=0, seed=3, augment=view)
finetuned, _ = finetune(encoder, images, labels, 2, warm)
from_scratch, _ = finetune(scratch, images, labels, 2, cold)
torch.save({"pretrained": finetuned.state_dict(), "scratch": from_scratch.state_dict()}, sys.argv[1])
"""


def _train_in_a_new_process(path: Path, draws_before: int) -> dict:
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", TRAIN_ONCE, str(path), str(draws_before)],
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )
    return torch.load(path, weights_only=True)


def test_two_processes_train_identical_weights(tmp_path):
    first = _train_in_a_new_process(tmp_path / "first.pt", draws_before=1)
    second = _train_in_a_new_process(tmp_path / "second.pt", draws_before=1000)
    for arm in ("pretrained", "scratch"):
        assert first[arm].keys() == second[arm].keys()
        for name, tensor in first[arm].items():
            assert torch.equal(tensor, second[arm][name]), f"{arm}: {name} differs between the two runs"
