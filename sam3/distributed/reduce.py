"""The global box count N and the loss scale W of DESIGN.md ("Loss normalisation").

The objective of an optimizer step is L = (1/N) * sum over every (frame, prompt) pair of every clip, on
every rank and every micro-batch of the step, of loss(pair), where N is the number of visible target
boxes over the same set, clamped to at least 1. Counts are known from the targets before any forward, so
N costs one all-reduce per step. Rank r computes L_r = (W/N) * sum over its own pairs; DDP averages
gradients over the W ranks, which yields exactly the gradient of L.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sam3.structures import ClipBatch


@dataclass(frozen=True)
class LossNormalization:
    """What the criterion needs to normalise a rank's share of the step loss.

    Attributes:
        num_boxes: N, visible target boxes over the whole step on every rank, clamped >= 1 (float, so
            the criterion can divide without a host sync).
        scale: W, the number of ranks whose gradients DDP averages.
    """

    num_boxes: float
    scale: float


def local_box_count(micro_batches: Sequence[ClipBatch]) -> int:
    """Visible target boxes in this rank's micro-batches of the step."""
    total = 0
    for batch in micro_batches:
        if batch.targets is None:
            raise ValueError("a training batch needs targets to count its boxes")
        total += batch.targets.total_boxes
    return total


def loss_normalization(micro_batches: Sequence[ClipBatch], device: torch.device | str = "cpu") -> LossNormalization:
    """N over the whole world and step (one all-reduce) and the scale W, for this rank's micro-batches.

    Every rank must call this once per optimizer step, before the first forward. Without a process group
    N is the local count and W is 1.
    """
    count = torch.tensor([float(local_box_count(micro_batches))], dtype=torch.float64, device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world_size = dist.get_world_size()
    return LossNormalization(num_boxes=max(float(count.item()), 1.0), scale=float(world_size))
