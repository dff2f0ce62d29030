"""MoCo's shuffling BN (arXiv 1911.05722, §3.3) on every backend: the keys are encoded in other BatchNorm groups
than their queries (halves of the batch in one process, ranks under gloo), and are handed back in their order."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ranks import spawn_ranks
from torch import nn

from ssl_models.methods.moco import MoCoV2

PAIRS, WORLD_SIZE = 6, 2


class RecordingNet(nn.Module):
    """A linear encoder of 4x4 gray images that records the ids (first pixel) of every batch it is called on."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, self.feature_dim)
        self.calls: list[list[int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 1, 4, 4) -> (B, 8)
        self.calls.append(images[:, 0, 0, 0].long().tolist())
        return self.linear(images.flatten(1))


def _moco() -> tuple[MoCoV2, list]:
    torch.manual_seed(0)
    moco, calls = MoCoV2(RecordingNet(), projection_dim=4, queue_size=32, seed=3), []
    moco.encoder.calls = moco.key_encoder.calls = calls  # one record: query calls first, then key calls
    return moco, calls


def _views(first_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of PAIRS images, ids first_id.. in pixel (0, 0); view b's ids are view a's + 100."""
    views = torch.rand(2 * PAIRS, 1, 4, 4, generator=torch.Generator().manual_seed(first_id))
    views[:, 0, 0, 0] = torch.cat([torch.arange(PAIRS), torch.arange(PAIRS) + 100]) + first_id
    return views[:PAIRS], views[PAIRS:]


def _row_by_row_keys(moco: MoCoV2, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
    """The keys without groups or shuffle (eval mode: BatchNorm's running statistics, each row on its own)."""
    with torch.no_grad():
        return F.normalize(moco.key_projection(moco.key_encoder(torch.cat([views_a, views_b]))), dim=1)


def test_one_process_encodes_keys_in_other_halves_than_their_queries_and_hands_them_back_in_order():
    moco, calls = _moco()
    head_batches = []
    for head in (moco.projection, moco.key_projection):
        head.register_forward_hook(lambda module, inputs, output: head_batches.append(len(inputs[0])))
    views_a, views_b = _views(0)
    moco(views_a, views_b)
    assert head_batches == [PAIRS] * 4  # the heads' BatchNorm is grouped too: two query groups, two key groups
    queries, keys = calls[:2], calls[2:]
    assert queries == [list(range(PAIRS)), list(range(100, 100 + PAIRS))]  # two BatchNorm groups, as they come
    assert len(keys) == 2 and sorted(keys[0] + keys[1]) == sorted(queries[0] + queries[1])
    assert {frozenset(group) for group in keys} != {frozenset(group) for group in queries}  # the keys were shuffled
    moco.after_step(0.1)
    calls.clear()
    moco(views_a, views_b)
    assert calls[2:] != keys, "each step draws a new shuffle"
    moco.eval()
    calls.clear()
    moco(views_a, views_b)
    assert torch.allclose(
        moco._new_keys, _row_by_row_keys(moco, views_a, views_b), atol=1e-6
    )  # unshuffled: row i is view i's key


def test_a_resumed_moco_draws_the_shuffle_of_the_step_it_resumes_at():
    moco, calls = _moco()
    for _ in range(3):
        moco(*_views(0))
        moco.after_step(0.1)
    calls.clear()
    moco(*_views(0))
    expected = calls[2:]
    resumed, calls = _moco()
    resumed.load_state_dict(moco.state_dict())
    resumed(*_views(0))
    assert calls[2:] == expected and int(resumed.steps_done) == 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        moco, calls = _moco()
        views_a, views_b = _views(1000 * rank)
        moco.eval()  # first, while every rank's BatchNorm statistics are the same (DDP broadcasts them in training)
        moco(views_a, views_b)
        keys_in_order = torch.allclose(moco._new_keys, _row_by_row_keys(moco, views_a, views_b), atol=1e-6)
        moco.train()
        calls.clear()
        moco(views_a, views_b)
        results[rank] = (list(calls), keys_in_order)
    finally:
        dist.destroy_process_group()


def test_gloo_ranks_encode_keys_after_a_shuffle_across_ranks_and_get_their_own_back():
    """Under torchrun the BatchNorm groups are the ranks (the paper's per-GPU BatchNorm): each rank encodes its
    queries whole, and a shuffled share of every rank's key views."""
    results = mp.Manager().dict()
    spawn_ranks(_rank, args=(_free_port(), results), nprocs=WORLD_SIZE)
    for rank in range(WORLD_SIZE):
        calls, keys_in_order = results[rank]
        own = set(range(1000 * rank, 1000 * rank + PAIRS)) | set(range(1000 * rank + 100, 1000 * rank + 100 + PAIRS))
        assert set(calls[0]) == own and len(calls) == 2  # one query group: the rank's batch; one key group
        assert len(calls[1]) == 2 * PAIRS and set(calls[1]) != own, "the rank encoded other ranks' key views"
        assert keys_in_order, f"rank {rank} got keys in another order than its views"
