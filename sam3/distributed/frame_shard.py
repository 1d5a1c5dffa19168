"""This rank's frame group and the async all-gather buffer (DESIGN.md "Frame sharding").

`FrameGroup` is the one interface the rest of the code sees: its layout (group size, group rank, ...,
arithmetic from `sam3.distributed.frame_layout`), `gather_into` a `FrameBuffer`, and an autograd-aware
gather. `build_frame_group` returns `LocalFrameGroup` at world size 1 (nothing travels) and
`ProcessFrameGroup` otherwise; it is called after the default process group exists.

Per-frame tensors of mixed dtypes travel as their raw bytes packed into one uint8 buffer per chunk
(`PackedLayout`), so one collective carries a chunk and every value arrives bit-exact in its own dtype
(int64 above 2**24, bf16 stays two bytes).
"""

from __future__ import annotations

import datetime
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sam3.distributed.env import get_rank, get_world_size, new_subgroups
from sam3.distributed.frame_layout import FrameGroupLayout, frames_of_rank, owner_of_frame
from sam3.distributed.timeouts import operation, timeout_s

logger = logging.getLogger(__name__)

FrameTensors = dict[str, torch.Tensor]
_ALIGN_BYTES = 16  # every packed tensor starts at a multiple of this, so it can be viewed in its dtype


class FrameGroup(ABC):
    """This rank's frame group: the ownership rule and gathers of per-frame tensors among its ranks.

    Args:
        layout: how the world splits into frame groups.
        rank: this rank's global rank.
    """

    def __init__(self, layout: FrameGroupLayout, rank: int) -> None:
        self.layout = layout
        self.rank = rank
        self.group_idx = layout.group_idx(rank)
        self.group_rank = layout.group_rank(rank)

    @property
    def group_size(self) -> int:
        return self.layout.group_size

    @property
    def num_groups(self) -> int:
        return self.layout.num_groups

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    def my_frames(self, num_frames: int) -> list[int]:
        """Global indices of this rank's frames in a T-frame clip."""
        return frames_of_rank(num_frames, self.group_size, self.group_rank)

    def owner(self, frame_idx: int) -> int:
        """Group rank that owns frame `frame_idx`."""
        return owner_of_frame(frame_idx, self.group_size)

    def new_buffer(self) -> FrameBuffer:
        """An empty buffer for `gather_into`."""
        return FrameBuffer()

    def gather_into(
        self,
        buffer: FrameBuffer,
        chunk_keys: Sequence[Hashable | None],
        tensors: FrameTensors,
        wait: bool = False,
    ) -> None:
        """Starts gathering this rank's named per-frame tensors into `buffer`, one collective per chunk.

        Gradients do not flow through this gather (see `all_gather_with_grad`).

        Args:
            buffer: where the group's frames land.
            chunk_keys: per group rank, the key (e.g. frame index) of the frame it contributes, or None
                for a rank with no frame in this chunk (its contribution is dropped).
            tensors: this rank's tensors for its frame; same names, shapes and dtypes on every rank.
            wait: finish the gather before returning (synchronous mode, for comparison).
        """
        if len(chunk_keys) != self.group_size:
            raise ValueError(f"a chunk needs one key per group rank ({self.group_size}), got {len(chunk_keys)}")
        self._gather_into(buffer, chunk_keys, tensors, wait)

    @abstractmethod
    def _gather_into(
        self, buffer: FrameBuffer, chunk_keys: Sequence[Hashable | None], tensors: FrameTensors, wait: bool
    ) -> None: ...

    @abstractmethod
    def all_gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """One same-shaped tensor from every group rank (index = group rank), with gradients flowing back
        to the owner (for losses that need all frames). Synchronous."""


class LocalFrameGroup(FrameGroup):
    """The frame group of a single process: one rank, nothing travels."""

    def __init__(self) -> None:
        super().__init__(FrameGroupLayout(world_size=1, group_size=1), rank=0)

    def _gather_into(
        self, buffer: FrameBuffer, chunk_keys: Sequence[Hashable | None], tensors: FrameTensors, wait: bool
    ) -> None:
        buffer.put(chunk_keys[0], {name: tensor.detach() for name, tensor in tensors.items()})

    def all_gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]


class ProcessFrameGroup(FrameGroup):
    """A frame group of processes, gathering through its `torch.distributed` (sub)group.

    Args:
        layout: how the world splits into frame groups; every rank builds the same one (creating the
            sub-groups is collective).
        rank: this rank's global rank.
    """

    def __init__(self, layout: FrameGroupLayout, rank: int) -> None:
        super().__init__(layout, rank)
        if layout.num_groups == 1:
            self.group = dist.group.WORLD
        else:
            self.group = new_subgroups([layout.ranks_of_group(g) for g in range(layout.num_groups)])

    def _gather_into(
        self, buffer: FrameBuffer, chunk_keys: Sequence[Hashable | None], tensors: FrameTensors, wait: bool
    ) -> None:
        layout = PackedLayout.of(tensors)
        packed = layout.pack(tensors)  # (bytes,) uint8, contiguous
        received = [torch.empty_like(packed) for _ in range(self.group_size)]
        with operation("frame gather"):
            handle = dist.all_gather(received, packed, group=self.group, async_op=True)
        if wait:
            _Pending(handle).wait()
            handle = None
        buffer.put_chunk(chunk_keys, received, handle, layout)

    def all_gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return list(_AllGatherWithGrad.apply(self.group, self.group_size, tensor.contiguous()))


def build_frame_group(frame_group_size: int | None = None) -> FrameGroup:
    """This rank's frame group of `frame_group_size` ranks (None: all ranks); call after the process group
    exists. World size 1 gives a `LocalFrameGroup`."""
    layout = FrameGroupLayout.from_config(get_world_size(), frame_group_size)
    group = LocalFrameGroup() if layout.world_size == 1 else ProcessFrameGroup(layout, get_rank())
    logger.info(
        "frame sharding: %d ranks in %d frame group(s) of %d; this rank is group %d, group rank %d",
        layout.world_size,
        layout.num_groups,
        layout.group_size,
        group.group_idx,
        group.group_rank,
    )
    return group


class FrameBuffer:
    """Per-frame named tensors, stored as computed or arriving through asynchronous all-gathers.

    Each gathered chunk of frames is one collective whose handle is shared by the chunk's frames.
    `get(key)` waits on the frame's handle the first time it is read; `evict(keys)` drops frames no
    longer needed.
    """

    def __init__(self) -> None:
        # key -> (tensors, or a packed buffer with its layout, and the pending gather that fills it)
        self._frames: dict[Hashable, tuple[FrameTensors | torch.Tensor, PackedLayout | None, _Pending]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def keys(self) -> list[Hashable]:
        return list(self._frames)

    def put(self, key: Hashable | None, tensors: FrameTensors) -> None:
        """Stores a frame's tensors as they are (a key of None is dropped)."""
        if key is not None:
            self._frames[key] = (tensors, None, _Pending(None))

    def put_chunk(
        self,
        keys: Sequence[Hashable | None],
        received: list[torch.Tensor],
        handle: dist.Work | None,
        layout: PackedLayout,
    ) -> None:
        """Registers an in-flight gather: `received[r]` will hold the packed tensors of `keys[r]`.

        Entries of `keys` that are None (ranks with no frame in this chunk) are dropped.
        """
        pending = _Pending(handle)
        for key, packed in zip(keys, received, strict=True):
            if key is not None:
                self._frames[key] = (packed, layout, pending)

    def get(self, key: Hashable) -> FrameTensors:
        """The named tensors of frame `key`, waiting for its gather to finish if needed."""
        if key not in self._frames:
            raise KeyError(f"frame {key} is not in the buffer (held: {self.keys})")
        payload, layout, pending = self._frames[key]
        pending.wait()
        return payload if layout is None else layout.unpack(payload)

    def evict(self, keys: Sequence[Hashable]) -> None:
        """Drops frames that are no longer needed (waiting for their gather first, so buffers are free)."""
        for key in keys:
            entry = self._frames.pop(key, None)
            if entry is not None:
                entry[2].wait()


@dataclass(frozen=True)
class PackedLayout:
    """Names, shapes and dtypes of tensors packed as raw bytes into one uint8 buffer (same on every rank)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @staticmethod
    def of(tensors: FrameTensors) -> PackedLayout:
        return PackedLayout(
            names=tuple(tensors),
            shapes=tuple(tuple(t.shape) for t in tensors.values()),
            dtypes=tuple(t.dtype for t in tensors.values()),
        )

    def pack(self, tensors: FrameTensors) -> torch.Tensor:
        """The named tensors' bytes, each padded to a multiple of 16 bytes, as one contiguous uint8 buffer."""
        parts = []
        for name, (_, end, stop) in zip(self.names, self._spans(), strict=True):
            tensor = tensors[name].detach().contiguous().reshape(-1)
            parts.append(tensor.view(torch.uint8))
            if stop > end:
                parts.append(tensor.new_zeros(stop - end, dtype=torch.uint8))
        return torch.cat(parts)

    def unpack(self, packed: torch.Tensor) -> FrameTensors:
        """The named tensors, as views of `packed` in their own dtypes and shapes."""
        return {
            name: packed[start:end].view(dtype).view(shape)
            for name, shape, dtype, (start, end, _) in zip(
                self.names, self.shapes, self.dtypes, self._spans(), strict=True
            )
        }

    def _spans(self) -> list[tuple[int, int, int]]:
        """Per tensor: (first byte, end of its bytes, end of its padded slot)."""
        spans, offset = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            num_bytes = int(torch.Size(shape).numel()) * dtype.itemsize
            padded = -(-num_bytes // _ALIGN_BYTES) * _ALIGN_BYTES
            spans.append((offset, offset + num_bytes, offset + padded))
            offset += padded
        return spans


class _Pending:
    """A collective handle waited on at most once, shared by the frames of one chunk."""

    def __init__(self, handle: dist.Work | None) -> None:
        self._handle = handle

    def wait(self) -> None:
        """Waits at most `distributed.timeout_s`; a late peer raises `CollectiveError`."""
        if self._handle is not None:
            with operation("frame gather: wait"):
                self._handle.wait(timeout=datetime.timedelta(seconds=timeout_s()))
            self._handle = None


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the gradient of its own contribution."""

    @staticmethod
    def forward(ctx, group, group_size: int, tensor: torch.Tensor):  # type: ignore[override]
        ctx.group = group
        ctx.group_rank = dist.get_rank(group)
        received = [torch.empty_like(tensor) for _ in range(group_size)]
        with operation("all-gather with gradient"):
            dist.all_gather(received, tensor, group=group)
        return tuple(received)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        stacked = torch.stack([g.contiguous() for g in grads])
        with operation("all-gather with gradient: backward all-reduce"):
            dist.all_reduce(stacked, group=ctx.group)
        return None, None, stacked[ctx.group_rank]
