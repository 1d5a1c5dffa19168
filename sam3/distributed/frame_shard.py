"""Frame groups, the round-robin frame-ownership rule and the async all-gather buffer (DESIGN.md "Frame sharding").

The world of W ranks is split into frame groups of F consecutive ranks (F divides W). The ranks of one
group work on the same clips; different groups see different clips. Within a clip of T frames, frame t
belongs to group rank t mod F. The data side decodes only a rank's own frames; the model side uses the
same rule to know who holds which frame when it gathers per-frame outputs.

`FrameSharder` is built after the default process group exists and injected into the video model. With
world size 1 (no process group) it runs the same code path without communicating.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sam3.distributed.env import get_rank, get_world_size, new_subgroups

logger = logging.getLogger(__name__)


def frames_of_rank(num_frames: int, group_size: int, group_rank: int) -> list[int]:
    """Global indices of the frames of a T-frame clip that group rank `group_rank` owns (t mod F == rank)."""
    if not 0 <= group_rank < group_size:
        raise ValueError(f"group rank {group_rank} is outside [0, frame group size {group_size})")
    return list(range(group_rank, num_frames, group_size))


def owner_of_frame(frame_idx: int, group_size: int) -> int:
    """The group rank that owns global frame `frame_idx` of a clip."""
    return frame_idx % group_size


@dataclass(frozen=True)
class FrameGroupLayout:
    """How W ranks split into frame groups of F consecutive ranks; pure arithmetic, no communication.

    Attributes:
        world_size: W, all ranks of the job.
        group_size: F, ranks per frame group; F divides W.
    """

    world_size: int
    group_size: int

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.world_size % self.group_size != 0:
            raise ValueError(
                f"distributed.frame_group_size={self.group_size} must divide the world size: "
                f"{self.world_size} ranks = {self.world_size // max(self.group_size, 1)} groups * {self.group_size}"
                f" + {self.world_size % max(self.group_size, 1)} left over. Choose a divisor of {self.world_size} "
                "or null (one group of all ranks)."
            )

    @staticmethod
    def from_config(world_size: int, frame_group_size: int | None) -> FrameGroupLayout:
        """`frame_group_size` None means one group spanning the whole world."""
        return FrameGroupLayout(world_size, world_size if frame_group_size is None else int(frame_group_size))

    @property
    def num_groups(self) -> int:
        return self.world_size // self.group_size

    def group_idx(self, rank: int) -> int:
        """Which frame group (data-parallel replica) a global rank belongs to."""
        return rank // self.group_size

    def group_rank(self, rank: int) -> int:
        """A global rank's position inside its frame group."""
        return rank % self.group_size

    def ranks_of_group(self, group_idx: int) -> list[int]:
        start = group_idx * self.group_size
        return list(range(start, start + self.group_size))


class FrameSharder:
    """This rank's frame group: its process group, the ownership rule and gathers of per-frame tensors.

    Args:
        frame_group_size: F; None means all ranks form one group.
    """

    def __init__(self, frame_group_size: int | None = None) -> None:
        self.rank = get_rank()
        self.layout = FrameGroupLayout.from_config(get_world_size(), frame_group_size)
        self.group_idx = self.layout.group_idx(self.rank)
        self.group_rank = self.layout.group_rank(self.rank)
        if self.layout.world_size == 1:
            self.group: dist.ProcessGroup | None = None
        elif self.layout.num_groups == 1:
            self.group = dist.group.WORLD
        else:
            self.group = new_subgroups([self.layout.ranks_of_group(g) for g in range(self.layout.num_groups)])
        logger.info(
            "frame sharding: %d ranks in %d frame group(s) of %d; this rank is group %d, group rank %d",
            self.layout.world_size,
            self.layout.num_groups,
            self.group_size,
            self.group_idx,
            self.group_rank,
        )

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

    def all_gather_async(self, tensor: torch.Tensor) -> tuple[list[torch.Tensor], dist.Work | None]:
        """Starts gathering one same-shaped tensor from every rank of the group.

        Returns the F receive tensors (index = group rank) and the handle to wait on (None when alone,
        where the only entry is `tensor` itself). Gradients do not flow through this gather.
        """
        if not tensor.is_contiguous():
            raise ValueError("all_gather_async needs a contiguous tensor; call .contiguous() first")
        if self.group is None:
            return [tensor], None
        received = [torch.empty_like(tensor) for _ in range(self.group_size)]
        handle = dist.all_gather(received, tensor, group=self.group, async_op=True)
        return received, handle

    def new_buffer(self) -> AsyncFrameBuffer:
        """An empty buffer for `gather_into`."""
        return AsyncFrameBuffer()

    def gather_into(
        self,
        buffer: AsyncFrameBuffer,
        chunk_keys: Sequence[Hashable | None],
        tensors: dict[str, torch.Tensor],
        wait: bool = False,
    ) -> None:
        """Starts gathering this rank's named per-frame tensors into `buffer`, one collective per chunk.

        Args:
            buffer: where the group's frames land.
            chunk_keys: per group rank, the key (e.g. frame index) of the frame it contributes, or None
                for a rank with no frame in this chunk (its contribution is dropped).
            tensors: this rank's tensors for its frame; same names, shapes and dtypes on every rank.
            wait: finish the gather before returning (synchronous mode, for comparison).
        """
        if len(chunk_keys) != self.group_size:
            raise ValueError(f"a chunk needs one key per group rank ({self.group_size}), got {len(chunk_keys)}")
        layout = PackedLayout.of(tensors)
        received, handle = self.all_gather_async(layout.pack(tensors))
        if wait and handle is not None:
            handle.wait()
            handle = None
        buffer.put_chunk(chunk_keys, received, handle, layout)

    def all_gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Gathers one same-shaped tensor from every rank of the group, with gradients flowing back to
        the owner (for losses that need all frames). Synchronous."""
        if self.group is None:
            return [tensor]
        return list(_AllGatherWithGrad.apply(self.group, self.group_size, tensor.contiguous()))


class AsyncFrameBuffer:
    """Per-frame tensors arriving through asynchronous all-gathers, waited on only when read.

    Each chunk of frames is one collective whose handle is shared by the chunk's frames. `get(t)` waits
    on frame t's handle the first time it is read; `evict(frames)` drops frames no longer needed.
    Packing several named tensors per frame into one flat buffer keeps it to one collective per chunk.
    """

    def __init__(self) -> None:
        self._frames: dict[Hashable, tuple[torch.Tensor, PackedLayout, _Pending]] = {}

    def __contains__(self, frame_idx: Hashable) -> bool:
        return frame_idx in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def keys(self) -> list[Hashable]:
        return list(self._frames)

    def put_chunk(
        self,
        frame_indices: Sequence[Hashable | None],
        received: list[torch.Tensor],
        handle: dist.Work | None,
        layout: PackedLayout,
    ) -> None:
        """Registers an in-flight gather: `received[r]` will hold the packed tensors of `frame_indices[r]`.

        Entries of `frame_indices` that are None (ranks with no frame in this chunk) are dropped.
        """
        pending = _Pending(handle)
        for frame_idx, flat in zip(frame_indices, received):
            if frame_idx is not None:
                self._frames[frame_idx] = (flat, layout, pending)

    def get(self, frame_idx: Hashable) -> dict[str, torch.Tensor]:
        """The named tensors of frame `frame_idx`, waiting for its gather to finish if needed."""
        if frame_idx not in self._frames:
            raise KeyError(f"frame {frame_idx} is not in the buffer (held: {self.keys})")
        flat, layout, pending = self._frames[frame_idx]
        pending.wait()
        return layout.unpack(flat)

    def evict(self, frame_indices: Sequence[Hashable]) -> None:
        """Drops frames that are no longer needed (waiting for their gather first, so buffers are free)."""
        for frame_idx in frame_indices:
            entry = self._frames.pop(frame_idx, None)
            if entry is not None:
                entry[2].wait()


@dataclass(frozen=True)
class PackedLayout:
    """Names, shapes and dtypes of tensors packed into one flat float buffer (same on every rank)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @staticmethod
    def of(tensors: dict[str, torch.Tensor]) -> PackedLayout:
        return PackedLayout(
            names=tuple(tensors),
            shapes=tuple(tuple(t.shape) for t in tensors.values()),
            dtypes=tuple(t.dtype for t in tensors.values()),
        )

    def pack(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Flattens the named tensors into one contiguous 1-D buffer of `dtype` (float32 holds bools,
        small integers and bf16 values exactly)."""
        return torch.cat([tensors[name].detach().reshape(-1).to(dtype) for name in self.names])

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            numel = int(torch.Size(shape).numel())
            out[name] = flat[offset : offset + numel].view(shape).to(dtype)
            offset += numel
        return out


class _Pending:
    """A collective handle waited on at most once, shared by the frames of one chunk."""

    def __init__(self, handle: dist.Work | None) -> None:
        self._handle = handle

    def wait(self) -> None:
        if self._handle is not None:
            self._handle.wait()
            self._handle = None


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the gradient of its own contribution."""

    @staticmethod
    def forward(ctx, group, group_size: int, tensor: torch.Tensor):  # type: ignore[override]
        ctx.group = group
        ctx.group_rank = dist.get_rank(group)
        received = [torch.empty_like(tensor) for _ in range(group_size)]
        dist.all_gather(received, tensor, group=group)
        return tuple(received)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked, group=ctx.group)
        return None, None, stacked[ctx.group_rank]
