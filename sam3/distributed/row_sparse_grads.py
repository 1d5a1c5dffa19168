"""DDP's gradient all-reduce without the embedding rows no rank used.

A token embedding's gradient is zero outside the rows of the tokens in the step's prompts: the tiny
model's 49408 x 64 table (58% of its parameters) gets a few dozen non-zero rows, the released model's
49408 x 1024 table (200 MB in fp32) the same. DDP all-reduces every gradient densely; the comm hook
here sends, for a bucket holding embedding weights, first the union of the used rows (one byte per
row, a MAX all-reduce) and then only those rows beside the bucket's other gradients. The result is
the dense average: the union holds every row that is non-zero on any rank, every other row is zero
on every rank and stays zero (written as +0.0), and each sent element is summed over the same ranks
as before. On CUDA, selecting the rows waits for the bucket's gradients once (a host sync per such
bucket, at the end of backward, where the token table's gradient arrives).

    model = DistributedDataParallel(...)
    register_row_sparse_hook(model)   # no-op when no embedding weight is trained

No `from __future__ import annotations` here: DDP checks the hook's annotations as objects.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class RowSparseState:
    """What the hook needs: the group DDP averages over (None: the default group) and the ids of the
    embedding weights whose gradients are reduced row-sparse."""

    process_group: dist.ProcessGroup | None
    embedding_ids: frozenset[int]


# Smaller tables (object queries, the mask decoder's tokens) are parameters used whole every step:
# their rows are all non-zero, and the extra collective per bucket would buy nothing.
MIN_ROWS = 1024


def trained_embedding_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the dense lookup tables (`nn.Embedding`, >= MIN_ROWS rows) of `model` that train."""
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Embedding) and not m.sparse and m.weight.requires_grad and m.num_embeddings >= MIN_ROWS
    ]


def register_row_sparse_hook(ddp: DistributedDataParallel) -> bool:
    """Registers `row_sparse_allreduce_hook` on `ddp` when it trains an embedding; returns whether it did."""
    weights = trained_embedding_weights(ddp.module)
    if not weights:
        return False
    ddp.register_comm_hook(RowSparseState(ddp.process_group, frozenset(map(id, weights))), row_sparse_allreduce_hook)
    return True


def row_sparse_allreduce_hook(state: RowSparseState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages `bucket` over the group as DDP's default hook does (divide by the group size, then sum),
    sending of each embedding weight only the rows that are non-zero on some rank."""
    embedding_grads, other_grads = [], []
    for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
        (embedding_grads if id(param) in state.embedding_ids else other_grads).append(grad)
    if not embedding_grads:
        return default_hooks.allreduce_hook(state.process_group, bucket)

    group = state.process_group or dist.group.WORLD
    buffer = bucket.buffer()
    buffer.div_(group.size())
    used = torch.cat([_nonzero_rows(grad) for grad in embedding_grads]).to(torch.uint8)
    dist.all_reduce(used, op=dist.ReduceOp.MAX, group=group)
    used_rows = list(used.bool().split([grad.shape[0] for grad in embedding_grads]))
    payload = torch.cat(
        [grad[rows].flatten() for grad, rows in zip(embedding_grads, used_rows, strict=True)]
        + [grad.flatten() for grad in other_grads]
    )
    work = dist.all_reduce(payload, group=group, async_op=True)

    def scatter_back(fut: torch.futures.Future) -> torch.Tensor:
        reduced = fut.value()[0]
        offset = 0
        for grad, rows in zip(embedding_grads, used_rows, strict=True):
            count = int(rows.sum()) * grad.shape[1]
            grad.zero_()
            grad[rows] = reduced[offset : offset + count].view(-1, grad.shape[1])
            offset += count
        for grad in other_grads:
            grad.copy_(reduced[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
        return buffer

    return work.get_future().then(scatter_back)


def _nonzero_rows(grad: torch.Tensor) -> torch.Tensor:
    """(rows,) bool: rows of the (rows, width) `grad` holding a non-zero (or NaN) value. Ten times faster
    on CPU than `grad.ne(0).any(dim=1)`."""
    return (grad.amax(dim=1) != 0) | (grad.amin(dim=1) != 0)
