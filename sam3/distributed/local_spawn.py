"""Run a function on W local CPU ranks (gloo), for equivalence tools, benchmarks and tests.

Each rank is a fresh process (spawn) that sets the torchrun variables and initialises the default group
through `sam3.distributed.env`, so it exercises the same path as a real launch.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from sam3.distributed import env as dist_env
from sam3.distributed.timeouts import DEFAULT_TIMEOUT_S


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_local_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 600.0,
    threads_per_rank: int = 1,
    collective_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Any]:
    """Runs `fn(*args)` on `world_size` gloo ranks and returns each rank's picklable result, by rank.

    `timeout_s` bounds the whole run; `collective_timeout_s` is the process group's timeout
    (`distributed.timeout_s` of a real run). Raises RuntimeError with the failing rank's traceback if
    any rank fails or does not finish in time.
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_rank_main,
            args=(rank, world_size, port, threads_per_rank, collective_timeout_s, fn, args, results),
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    # Results are read while the ranks run: a rank blocks on a full pipe until its result is taken.
    outcomes: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < world_size and time.monotonic() < deadline:
        try:
            rank, ok, value = results.get(timeout=1.0)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                break  # a rank died without reporting; the others may wait on it forever
            continue
        outcomes[rank] = (ok, pickle.loads(value))
        if not ok:
            break  # the other ranks may hang in a collective with the failed one
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    failures = [f"rank {rank}:\n{value}" for rank, (ok, value) in sorted(outcomes.items()) if not ok]
    missing = [rank for rank in range(world_size) if rank not in outcomes]
    if failures or missing:
        exit_codes = {rank: p.exitcode for rank, p in enumerate(processes)}
        raise RuntimeError(
            f"{len(failures)} rank(s) failed and ranks {missing} did not report within {timeout_s:.0f} s "
            f"(exit codes {exit_codes})\n" + "\n".join(failures)
        )
    return [outcomes[rank][1] for rank in range(world_size)]


def _rank_main(rank, world_size, port, threads, collective_timeout_s, fn, args, results) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(threads)
    try:
        dist_env.init_distributed(backend="gloo", timeout_s=collective_timeout_s)
        # pickled by value here: tensors shared by file descriptor would vanish when this rank exits
        results.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException:  # report every failure, including KeyboardInterrupt, to the parent
        results.put((rank, False, pickle.dumps(traceback.format_exc())))
    finally:
        dist_env.teardown_distributed()
