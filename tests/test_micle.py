import numpy as np
import pytest

from ssl_models.micle import CasePairSampler


def test_partners_are_other_images_of_the_same_case():
    case_ids = ["a", "a", "b", "c", "c", "c", "d", "d"]
    sampler = CasePairSampler(case_ids, seed=3)
    for epoch in range(20):
        anchors, partners = sampler.pairs(epoch)
        assert sorted(anchors) == list(range(len(case_ids)))
        for anchor, partner in zip(anchors, partners):
            assert case_ids[anchor] == case_ids[partner]
            if case_ids[anchor] == "b":
                assert partner == anchor  # single-image case: falls back to two augmentations of one image
            else:
                assert partner != anchor


def test_every_other_member_is_drawn():
    sampler = CasePairSampler(["x"] * 4, seed=0)
    seen = {(a, p) for epoch in range(50) for a, p in zip(*sampler.pairs(epoch))}
    assert seen == {(a, p) for a in range(4) for p in range(4) if a != p}


def test_simclr_is_the_all_singleton_case():
    anchors, partners = CasePairSampler(list(range(6))).pairs(0)
    assert np.array_equal(anchors, partners)


def test_ranks_shard_the_epoch_like_distributed_sampler():
    case_ids = [i // 2 for i in range(11)]
    shards = [CasePairSampler(case_ids, seed=5, rank=r, world_size=3).pairs(2) for r in range(3)]
    assert all(len(anchors) == 4 for anchors, _ in shards)  # ceil(11 / 3), padded by wrapping
    covered = np.concatenate([anchors for anchors, _ in shards])
    assert set(covered) == set(range(11))
    for anchors, partners in shards:
        assert all(
            case_ids[a] == case_ids[p] and a != p or case_ids.count(case_ids[a]) == 1 for a, p in zip(anchors, partners)
        )


def test_rejects_empty_and_bad_rank():
    with pytest.raises(ValueError, match="at least one image"):
        CasePairSampler([])
    with pytest.raises(ValueError, match="rank"):
        CasePairSampler([1, 2], rank=2, world_size=2)
