"""Which clips a frame group sees, which frames of a clip a rank holds, and how a clip's frames are drawn.

DESIGN.md, "Frame sharding": the world of W ranks is split into W / F frame groups of F consecutive
ranks. Every rank of a group gets the same clip indices; different groups get disjoint clips. In a clip
of T frames, frame t belongs to group rank t mod F (`sam3.distributed.frame_layout.frames_of_rank`, the
one rule the data and the model side both ask). Randomness is a pure function of (seed, epoch, clip
index) (`clip_rng`), so the ranks of a group draw the same frames and augmentation without communicating.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

ClipKey = tuple[int, int]  # (epoch, clip index): what the samplers yield and the dataset takes


def clip_rng(seed: int, epoch: int, clip_idx: int, draw: int = 0) -> np.random.Generator:
    """The random stream of one clip: a pure function of (seed, epoch, clip index) and of the draw, which
    `sam3.data.mixed` varies per dataset and repeat; draw 0 is the stream of (seed, epoch, clip index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, clip_idx, *([draw] if draw else [])]))


def sample_clip_frames(
    length: int,
    num_frames: int,
    stride_range: tuple[int, int],
    reverse_prob: float,
    rng: np.random.Generator,
) -> list[int]:
    """Video frame positions of a training clip: T frames at a random stride from a random start.

    The stride is drawn from [stride_min, stride_max] after shrinking both to what the video allows;
    a video shorter than T gives all of its frames. With probability `reverse_prob` time is reversed.

    Args:
        length: frames in the video.
        num_frames: T, frames wanted.
        stride_range: (stride_min, stride_max), both >= 1.
        reverse_prob: probability of reversing the clip.
        rng: the clip's random stream (see `clip_rng`).
    """
    stride_min, stride_max = stride_range
    if not 1 <= stride_min <= stride_max:
        raise ValueError(f"stride_range must satisfy 1 <= min <= max, got {stride_range}")
    if num_frames < 1 or length < 1:
        raise ValueError(f"need num_frames >= 1 and length >= 1, got {num_frames} and {length}")
    count = min(num_frames, length)
    longest = (length - 1) // (count - 1) if count > 1 else stride_max
    stride = int(rng.integers(min(stride_min, longest), min(stride_max, longest) + 1))
    span = (count - 1) * stride + 1
    start = int(rng.integers(0, length - span + 1))
    frames = [start + i * stride for i in range(count)]
    if rng.random() < reverse_prob:
        frames.reverse()
    return frames


class FrameGroupSampler(Sampler[ClipKey]):
    """Distributed sampler over clips: one shared order per epoch, split between frame groups.

    Every rank of a frame group gets the same (epoch, clip index) keys; the groups get disjoint shares
    (with `drop_last` False the order is padded by wrapping, so a few clips repeat across groups, as in
    `torch.utils.data.DistributedSampler`). Resumable: `resume(epoch, position)` makes the next pass
    start `position` clips into that epoch's share; the pass after it starts at 0.

    Args:
        num_clips: clips in the dataset.
        num_groups: frame groups (W / F).
        group_idx: this rank's frame group.
        shuffle: draw a new order every epoch from (seed, epoch).
        seed: the order's seed, the same on every rank.
        drop_last: drop the tail that does not split evenly instead of padding.
    """

    def __init__(
        self,
        num_clips: int,
        *,
        num_groups: int = 1,
        group_idx: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if not 0 <= group_idx < num_groups:
            raise ValueError(f"group_idx must be in [0, num_groups={num_groups}), got {group_idx}")
        if num_clips < 1 or (drop_last and num_clips < num_groups):
            raise ValueError(f"{num_clips} clips cannot be split over {num_groups} frame groups")
        self.num_clips = num_clips
        self.num_groups = num_groups
        self.group_idx = group_idx
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    @property
    def clips_per_group(self) -> int:
        """Clips in one group's share of an epoch."""
        if self.drop_last:
            return self.num_clips // self.num_groups
        return -(-self.num_clips // self.num_groups)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch of the next pass, from its start (unless `resume` set a position for it)."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def resume(self, epoch: int, position: int) -> None:
        """Makes the next pass continue epoch `epoch` after the first `position` clips of this group's share."""
        if not 0 <= position <= self.clips_per_group:
            raise ValueError(f"position must be in [0, {self.clips_per_group}], got {position}")
        self.epoch = epoch
        self.position = position

    def state_dict(self, position: int) -> dict[str, int]:
        """What to checkpoint after this group consumed `position` clips of the current epoch."""
        return {"epoch": self.epoch, "position": position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume(state["epoch"], state["position"])

    def group_share(self, epoch: int) -> list[int]:
        """This group's clip indices of `epoch`, in order."""
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
            order = rng.permutation(self.num_clips).tolist()
        else:
            order = list(range(self.num_clips))
        total = self.clips_per_group * self.num_groups
        order = (order * (-(-total // len(order))))[:total]
        return order[self.group_idx :: self.num_groups]

    def __iter__(self) -> Iterator[ClipKey]:
        epoch, start = self.epoch, self.position
        self.position = 0
        return iter([(epoch, idx) for idx in self.group_share(epoch)[start:]])

    def __len__(self) -> int:
        return self.clips_per_group - self.position


def split_videos_for_eval(lengths: Sequence[int], num_groups: int) -> list[list[int]]:
    """Splits whole videos over frame groups, balancing frames: every video in exactly one share.

    Longest video first, each to the group with the fewest frames so far (ties: lowest group index);
    each share is returned in ascending video order.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    heap = [(0, g) for g in range(num_groups)]
    shares: list[list[int]] = [[] for _ in range(num_groups)]
    for video_idx in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, group = heapq.heappop(heap)
        shares[group].append(video_idx)
        heapq.heappush(heap, (load + lengths[video_idx], group))
    return [sorted(share) for share in shares]


class EvalVideoSampler(Sampler[ClipKey]):
    """Evaluation sampler: this frame group's whole videos (`split_videos_for_eval`), epoch 0.

    Args:
        lengths: frames of every video of the dataset.
        num_groups: frame groups (W / F).
        group_idx: this rank's frame group.
    """

    def __init__(self, lengths: Sequence[int], *, num_groups: int = 1, group_idx: int = 0):
        if not 0 <= group_idx < num_groups:
            raise ValueError(f"group_idx must be in [0, num_groups={num_groups}), got {group_idx}")
        self.videos = split_videos_for_eval(lengths, num_groups)[group_idx]

    def __iter__(self) -> Iterator[ClipKey]:
        return iter([(0, idx) for idx in self.videos])

    def __len__(self) -> int:
        return len(self.videos)
