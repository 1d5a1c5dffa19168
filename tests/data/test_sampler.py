"""Clip sampling and the frame-group samplers (training and evaluation); frame ownership is tested with
`sam3.distributed.frame_shard`."""

from __future__ import annotations

from itertools import pairwise

import pytest

from sam3.data.sampler import (
    EvalVideoSampler,
    FrameGroupSampler,
    clip_rng,
    sample_clip_frames,
    split_videos_for_eval,
)


def test_sample_clip_frames():
    for seed in range(50):
        frames = sample_clip_frames(40, 5, (2, 4), 0.0, clip_rng(seed, 0, 0))
        steps = {b - a for a, b in pairwise(frames)}
        assert len(frames) == 5 and len(steps) == 1 and steps.pop() in (2, 3, 4) and 0 <= frames[0] and frames[-1] < 40
    # Stride shrinks for a short video, a video shorter than T gives all its frames.
    assert sample_clip_frames(5, 5, (3, 3), 0.0, clip_rng(0, 0, 0)) == [0, 1, 2, 3, 4]
    assert sample_clip_frames(9, 5, (3, 6), 0.0, clip_rng(0, 0, 0)) == [0, 2, 4, 6, 8]
    assert sample_clip_frames(3, 5, (1, 2), 0.0, clip_rng(0, 0, 0)) == [0, 1, 2]
    assert sample_clip_frames(4, 4, (1, 1), 1.0, clip_rng(0, 0, 0)) == [3, 2, 1, 0]
    # A pure function of (seed, epoch, clip index).
    draws = {tuple(sample_clip_frames(100, 4, (1, 5), 0.5, clip_rng(1, e, 2))) for e in range(10)}
    assert len(draws) > 1
    assert sample_clip_frames(100, 4, (1, 5), 0.5, clip_rng(1, 3, 2)) == sample_clip_frames(
        100, 4, (1, 5), 0.5, clip_rng(1, 3, 2)
    )


@pytest.mark.parametrize("num_clips,num_groups,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False)])
def test_groups_get_disjoint_shares_of_one_order(num_clips, num_groups, drop_last):
    samplers = [
        FrameGroupSampler(num_clips, num_groups=num_groups, group_idx=g, seed=5, drop_last=drop_last)
        for g in range(num_groups)
    ]
    for epoch in (0, 1):
        shares = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            keys = list(sampler)
            assert all(e == epoch for e, _ in keys) and len(keys) == sampler.clips_per_group
            shares.append([i for _, i in keys])
        flat = [i for share in shares for i in share]
        if drop_last or num_clips % num_groups == 0:
            assert len(set(flat)) == len(flat)
        else:
            assert set(flat) == set(range(num_clips))  # padded by wrapping: every clip, a few twice
    orders = [[i for _, i in FrameGroupSampler(10, seed=5)] for _ in range(2)]
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(10)) and orders[0] != list(range(10))


def test_ranks_of_a_group_get_the_same_keys():
    # Group rank plays no part in which clips a rank sees: the same (num_groups, group_idx) gives the same keys.
    a = FrameGroupSampler(20, num_groups=2, group_idx=1, seed=3)
    b = FrameGroupSampler(20, num_groups=2, group_idx=1, seed=3)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b)


def test_resume_from_epoch_and_position():
    full = FrameGroupSampler(11, num_groups=2, group_idx=0, seed=9)
    full.set_epoch(2)
    reference = list(full)
    resumed = FrameGroupSampler(11, num_groups=2, group_idx=0, seed=9)
    resumed.load_state_dict(full.state_dict(position=4))
    assert len(resumed) == len(reference) - 4
    assert list(resumed) == reference[4:]
    assert list(resumed) == reference  # the next pass of the same epoch starts from 0
    resumed.set_epoch(3)
    assert [e for e, _ in resumed] == [3] * len(reference)
    with pytest.raises(ValueError, match="position"):
        resumed.resume(0, 99)


def test_eval_split_whole_videos_no_duplicates():
    lengths = [30, 5, 5, 20, 10, 1, 7]
    shares = split_videos_for_eval(lengths, 3)
    flat = [v for share in shares for v in share]
    assert sorted(flat) == list(range(len(lengths)))
    loads = [sum(lengths[v] for v in share) for share in shares]
    assert max(loads) - min(loads) <= max(lengths)
    samplers = [EvalVideoSampler(lengths, num_groups=3, group_idx=g) for g in range(3)]
    assert [[i for _, i in s] for s in samplers] == shares
    assert split_videos_for_eval([4, 4], 3)[2] == []  # more groups than videos: some get none
