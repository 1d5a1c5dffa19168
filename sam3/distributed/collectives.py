"""The world-wide collectives of the trainer, checkpointing and evaluation, in one place.

Each function is a collective: every rank calls it, in the same order. Without a process group (one
process) each returns what the lone rank would get and communicates nothing. Rank and world size come
from `sam3.distributed.env`. Each runs as a watched `sam3.distributed.timeouts.operation` named by its
`op` argument (what it is for), so a peer that never arrives ends in an error naming it and the step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from sam3.distributed.env import get_rank, get_world_size
from sam3.distributed.timeouts import operation


def is_distributed() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def barrier(op: str = "barrier") -> None:
    """Waits until every rank reaches this point."""
    if is_distributed():
        with operation(op):
            dist.barrier()


def all_gather_objects(obj: Any, op: str = "all-gather of objects") -> list[Any]:
    """Every rank's picklable `obj`, indexed by rank, on every rank."""
    if not is_distributed():
        return [obj]
    everyone: list[Any] = [None] * get_world_size()
    with operation(op):
        dist.all_gather_object(everyone, obj)
    return everyone


def gather_objects_to_rank0(obj: Any, op: str = "gather of objects to rank 0") -> list[Any]:
    """Every rank's picklable `obj`, indexed by rank, on rank 0; an empty list on other ranks."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * get_world_size() if get_rank() == 0 else None
    with operation(op):
        dist.gather_object(obj, gathered, dst=0)
    return gathered if get_rank() == 0 else []


def any_rank(flag: bool, device: torch.device | str = "cpu", op: str = "any-rank vote") -> bool:
    """True on every rank if `flag` is true on any rank (one one-element all-reduce on `device`, which
    must suit the backend: a CUDA device for nccl)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    with operation(op):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)  # on CUDA the wait happens here
