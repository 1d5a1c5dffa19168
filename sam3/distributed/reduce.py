"""The step's loss counts (N boxes, G pairs, ...) over the whole world, and the loss scale W.

The objective of an optimizer step is SAM3's set loss over every (frame, prompt) pair of every clip, on
every rank and every micro-batch of the step, each term divided by its count over that same set (see
`sam3.loss.normalization`). The counts are known from the targets before any forward, so they cost one
all-reduce per step. Rank r computes W times its pairs' share of that objective; DDP averages gradients
over the W ranks, which yields exactly the gradient of the whole step's objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from sam3.distributed.collectives import is_distributed
from sam3.distributed.env import get_world_size
from sam3.distributed.timeouts import operation
from sam3.loss.normalization import LossCounts, LossNormalization
from sam3.structures import ClipBatch


def local_counts(micro_batches: Sequence[ClipBatch]) -> LossCounts:
    """The loss counts of this rank's micro-batches of the step."""
    counts = []
    for batch in micro_batches:
        if batch.targets is None:
            raise ValueError("a training batch needs targets to count its boxes and pairs")
        counts.append(LossCounts.of(batch.targets))
    return LossCounts.total(counts)


def loss_normalization(micro_batches: Sequence[ClipBatch], device: torch.device | str = "cpu") -> LossNormalization:
    """The step's counts over the whole world (one all-reduce) and the scale W, for this rank's batches.

    Every rank must call this once per optimizer step, before the first forward. Without a process group
    the counts are the local ones and W is 1.
    """
    counts = local_counts(micro_batches).as_tensor(device)
    if is_distributed():
        with operation("all-reduce of the loss counts"):
            dist.all_reduce(counts)
            counts = counts.cpu()  # on CUDA the wait happens here
    return LossNormalization(LossCounts.from_tensor(counts.cpu()), scale=float(get_world_size()))
