"""Frame groups, the ownership rule, and async gathers (mixed dtypes kept exact) on real gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sam3.distributed.frame_layout import FrameGroupLayout, frames_of_rank, owner_of_frame
from sam3.distributed.frame_shard import LocalFrameGroup, PackedLayout, build_frame_group
from sam3.distributed.local_spawn import run_on_local_ranks


@pytest.mark.parametrize(("num_frames", "group_size"), [(8, 2), (5, 3), (2, 3), (1, 1)])
def test_round_robin_covers_every_frame_once(num_frames, group_size):
    owned = [frames_of_rank(num_frames, group_size, r) for r in range(group_size)]
    assert sorted(t for frames in owned for t in frames) == list(range(num_frames))
    for rank, frames in enumerate(owned):
        assert all(owner_of_frame(t, group_size) == rank for t in frames)


def test_layout_arithmetic_and_error():
    layout = FrameGroupLayout(world_size=8, group_size=2)
    assert layout.num_groups == 4
    assert (layout.group_idx(5), layout.group_rank(5)) == (2, 1)
    assert layout.ranks_of_group(3) == [6, 7]
    assert FrameGroupLayout.from_config(6, None).group_size == 6
    with pytest.raises(ValueError, match=r"6 ranks = 1 groups \* 4 \+ 2 left over"):
        FrameGroupLayout(world_size=6, group_size=4)


def test_single_process_group_needs_no_communication():
    group = build_frame_group(frame_group_size=None)
    assert isinstance(group, LocalFrameGroup) and (group.group_size, group.group_rank) == (1, 0)
    buffer = group.new_buffer()
    group.gather_into(buffer, [3], {"value": torch.ones(3)})
    assert torch.equal(buffer.get(3)["value"], torch.ones(3))
    assert group.my_frames(4) == [0, 1, 2, 3]


def _mixed_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Tensors a float32 buffer cannot carry exactly: int64 above 2**24, bf16, odd byte counts."""
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(2, 5, 1, generator=g),
        "mask": torch.rand(2, 3, 3, generator=g) > 0.5,
        "ids": torch.arange(3) + 2**40 + seed,
        "scores_bf16": torch.randn(7, generator=g).bfloat16(),
        "byte": torch.tensor(seed % 256, dtype=torch.uint8),
        "half": torch.randn(3, generator=g).half(),
    }


def test_packed_layout_round_trip():
    tensors = _mixed_tensors(0)
    layout = PackedLayout.of(tensors)
    unpacked = layout.unpack(layout.pack(tensors))
    for name, tensor in tensors.items():
        assert unpacked[name].dtype == tensor.dtype and torch.equal(unpacked[name], tensor)


def _gather_chunks(frame_group_size, num_frames):
    group = build_frame_group(frame_group_size)
    buffer = group.new_buffer()
    read = {}
    for chunk_start in range(0, num_frames, group.group_size):
        chunk = [chunk_start + r if chunk_start + r < num_frames else None for r in range(group.group_size)]
        mine = chunk[group.group_rank]
        frame = mine if mine is not None else chunk_start  # ranks past the end send a duplicate, dropped
        tensors = {"value": torch.full((2,), 10.0 * group.group_idx + frame), "frame": torch.tensor(frame)}
        group.gather_into(buffer, chunk, tensors)
        for t in (t for t in chunk if t is not None):
            got = buffer.get(t)
            read[t] = (got["value"].tolist(), int(got["frame"]))
        buffer.evict([t for t in chunk if t is not None])
    assert len(buffer) == 0
    return group.group_idx, group.group_rank, read


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_async_buffer_gathers_every_frame_in_groups():
    results = run_on_local_ranks(_gather_chunks, 4, 2, 5, timeout_s=150)
    for group_idx, _, read in results:
        assert sorted(read) == list(range(5))
        for t, (value, frame) in read.items():
            assert frame == t and value == [10.0 * group_idx + t] * 2


def _gather_mixed_dtypes():
    group = build_frame_group(None)
    buffer = group.new_buffer()
    group.gather_into(buffer, list(range(group.group_size)), _mixed_tensors(group.group_rank))
    return {r: buffer.get(r) for r in range(group.group_size)}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_mixed_dtypes_arrive_exact_in_their_own_dtype():
    for received in run_on_local_ranks(_gather_mixed_dtypes, 3, timeout_s=100):
        for group_rank, tensors in received.items():
            expected = _mixed_tensors(group_rank)
            assert list(tensors) == list(expected)
            for name, tensor in expected.items():
                got = tensors[name]
                assert (got.dtype, got.shape) == (tensor.dtype, tensor.shape), name
                assert torch.equal(got, tensor), name


def _gather_with_grad():
    group = build_frame_group(None)
    x = torch.tensor([float(group.group_rank + 1)], requires_grad=True)
    gathered = group.all_gather_with_grad(x * 2)
    # loss = sum_r (r+1) * gathered[r]; d loss / d x_mine = 2 * (my_rank + 1) summed over ranks' losses.
    loss = sum((r + 1) * g.sum() for r, g in enumerate(gathered))
    loss.backward()
    dist.barrier()
    return x.grad.item()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_all_gather_with_grad_routes_gradients_to_owner():
    grads = run_on_local_ranks(_gather_with_grad, 3, timeout_s=100)
    # every rank computes the same loss, so each owner's gradient is summed over the 3 ranks
    assert grads == [3 * 2 * 1.0, 3 * 2 * 2.0, 3 * 2 * 3.0]
