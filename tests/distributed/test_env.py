"""Environment parsing (no processes) and a real 2-process gloo group initialised through env.py."""

from __future__ import annotations

import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sam3.distributed import env as dist_env_module
from sam3.distributed.env import DistEnv, RankZeroFilter, first_slurm_host, read_dist_env


def test_no_variables_means_single_process():
    assert read_dist_env({}) == DistEnv(rank=0, world_size=1, launcher="single")
    assert not read_dist_env({}).is_distributed


def test_torchrun_variables():
    env = read_dist_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "29511",
        }
    )
    assert env == DistEnv(3, 8, 1, 2, "node7", 29511, "torchrun")
    assert env.is_distributed and not env.is_main


def test_torchrun_restart_count_is_read():
    env = read_dist_env({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "2"})
    assert env.restart_count == 2 and read_dist_env({"RANK": "0", "WORLD_SIZE": "2"}).restart_count == 0


def test_torchrun_wins_over_slurm_inside_an_sbatch_script():
    env = read_dist_env({"RANK": "1", "WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert env.launcher == "torchrun" and env.rank == 1 and env.world_size == 4


def test_slurm_task_variables():
    env = read_dist_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_TASKS_PER_NODE": "4(x2)",
            "SLURM_JOB_NODELIST": "gpu[003-004]",
            "SLURM_JOB_ID": "123",
        }
    )
    assert env.launcher == "slurm"
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 4)
    assert env.master_addr == "gpu003"
    assert env.master_port == 15000 + 123


def test_slurm_master_port_from_environment_wins():
    env = read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "MASTER_PORT": "4242", "MASTER_ADDR": "h"})
    assert env.master_port == 4242 and env.master_addr == "h"


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("node1", "node1"), ("gpu[003-005,010],cpu1", "gpu003"), ("a-b[7,9]", "a-b7"), ("x1,x2", "x1")],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, "rank 4 is outside"),
        ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "world size must be >= 1"),
    ],
)
def test_bad_variables_raise_naming_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        read_dist_env(environ)


def test_rank_zero_filter():
    info = logging.LogRecord("x", logging.INFO, "f", 1, "m", None, None)
    warning = logging.LogRecord("x", logging.WARNING, "f", 1, "m", None, None)
    assert RankZeroFilter(0).filter(info)
    assert not RankZeroFilter(1).filter(info)
    assert RankZeroFilter(1).filter(warning)


def test_single_process_init_creates_no_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    env = dist_env_module.init_distributed()
    assert env.world_size == 1 and not dist.is_initialized()
    assert dist_env_module.get_world_size() == 1 and dist_env_module.new_subgroups([[0]]) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, results: mp.Queue) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    try:
        env = dist_env_module.init_distributed(backend="gloo")
        summed = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(summed)
        gathered = [torch.empty(2) for _ in range(world_size)]
        handle = dist.all_gather(gathered, torch.full((2,), float(env.rank)), async_op=True)
        handle.wait()
        group = dist_env_module.new_subgroups([[r] for r in range(world_size)])
        alone = torch.tensor([1.0])
        dist.all_reduce(alone, group=group)
        results.put((env.rank, os.getpid(), summed.item(), [g.tolist() for g in gathered], alone.item()))
    finally:
        dist_env_module.teardown_distributed()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_real_processes_all_reduce_and_async_all_gather():
    world_size = 2
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, world_size, port, results)) for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=100)
        assert process.exitcode == 0, f"rank process exited with {process.exitcode}"
    outcome = sorted(results.get(timeout=5) for _ in range(world_size))
    assert [rank for rank, *_ in outcome] == [0, 1]
    assert len({pid for _, pid, *_ in outcome}) == 2 and os.getpid() not in {pid for _, pid, *_ in outcome}
    for _, _, summed, gathered, alone in outcome:
        assert summed == 3.0
        assert gathered == [[0.0, 0.0], [1.0, 1.0]]
        assert alone == 1.0
