"""Which rank holds which frame: the frame-group layout and the round-robin ownership rule, pure arithmetic.

The world of W ranks is split into frame groups of F consecutive ranks (F divides W). The ranks of one
group work on the same clips; different groups see different clips. Within a clip of T frames, frame t
belongs to group rank t mod F (DESIGN.md "Frame sharding"). The data side asks this module which frames
to decode; `sam3.distributed.frame_shard` asks it who holds which frame when it gathers. Nothing here
communicates, so it imports no `torch.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """How W ranks split into frame groups of F consecutive ranks.

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
