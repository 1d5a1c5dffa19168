"""Frame groups, the ownership rule, and async gathers on real gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sam3.distributed.frame_shard import (
    AsyncFrameBuffer,
    FrameGroupLayout,
    FrameSharder,
    PackedLayout,
    frames_of_rank,
    owner_of_frame,
)
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


def test_single_process_sharder_needs_no_communication():
    sharder = FrameSharder(frame_group_size=None)
    assert (sharder.group_size, sharder.group_rank, sharder.group) == (1, 0, None)
    received, handle = sharder.all_gather_async(torch.ones(3))
    assert handle is None and torch.equal(received[0], torch.ones(3))
    assert sharder.my_frames(4) == [0, 1, 2, 3]


def test_packed_layout_round_trip():
    tensors = {"logits": torch.randn(2, 5, 1), "mask": torch.rand(2, 3, 3) > 0.5, "ids": torch.arange(4)}
    layout = PackedLayout.of(tensors)
    unpacked = layout.unpack(layout.pack(tensors))
    for name, tensor in tensors.items():
        assert unpacked[name].dtype == tensor.dtype and torch.equal(unpacked[name], tensor)


def _gather_chunks(frame_group_size, num_frames):
    sharder = FrameSharder(frame_group_size)
    buffer = AsyncFrameBuffer()
    layout = PackedLayout.of({"value": torch.zeros(2), "frame": torch.zeros((), dtype=torch.int64)})
    read = {}
    for chunk_start in range(0, num_frames, sharder.group_size):
        chunk = [chunk_start + r if chunk_start + r < num_frames else None for r in range(sharder.group_size)]
        mine = chunk[sharder.group_rank]
        frame = mine if mine is not None else chunk_start  # ranks past the end send a duplicate, dropped
        tensors = {"value": torch.full((2,), 10.0 * sharder.group_idx + frame), "frame": torch.tensor(frame)}
        received, handle = sharder.all_gather_async(layout.pack(tensors))
        buffer.put_chunk(chunk, received, handle, layout)
        for t in (t for t in chunk if t is not None):
            got = buffer.get(t)
            read[t] = (got["value"].tolist(), int(got["frame"]))
        buffer.evict([t for t in chunk if t is not None])
    assert len(buffer) == 0
    return sharder.group_idx, sharder.group_rank, read


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_async_buffer_gathers_every_frame_in_groups():
    results = run_on_local_ranks(_gather_chunks, 4, 2, 5, timeout_s=150)
    for group_idx, _, read in results:
        assert sorted(read) == list(range(5))
        for t, (value, frame) in read.items():
            assert frame == t and value == [10.0 * group_idx + t] * 2


def _gather_with_grad():
    sharder = FrameSharder(None)
    x = torch.tensor([float(sharder.group_rank + 1)], requires_grad=True)
    gathered = sharder.all_gather_with_grad(x * 2)
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
