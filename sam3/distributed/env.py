"""The process's place in the distributed world, read from the environment, and the default group.

This module is the only reader of RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR /
MASTER_PORT / TORCHELASTIC_RESTART_COUNT (set by torchrun) and of SLURM's task variables (set by `srun` or submitit, one task per
rank). With neither, the process is alone: world size 1 and no process group, and every caller runs the
same code path without communication.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from sam3.distributed import timeouts
from sam3.distributed.timeouts import DEFAULT_TIMEOUT_S

logger = logging.getLogger(__name__)

Launcher = Literal["torchrun", "slurm", "single"]

# Port range for the rendezvous of SLURM jobs that set no MASTER_PORT: derived from the job id so
# that all tasks of a job agree without communicating and concurrent jobs rarely collide.
_SLURM_PORT_BASE = 15000
_SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size and rank on its node.

    Attributes:
        rank: global rank in [0, world_size).
        world_size: number of processes in the job.
        local_rank: rank on this node (selects the GPU).
        local_world_size: processes on this node.
        master_addr: rendezvous host of the default process group (None when alone).
        master_port: rendezvous port (None when alone).
        launcher: what started the process: "torchrun", "slurm" or "single".
        restart_count: how often torchrun has restarted the world so far (`--max-restarts`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launcher: Launcher = "single"
    restart_count: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Reads the process's place in the world from `environ` (default `os.environ`).

    torchrun's variables win over SLURM's (an sbatch script may run torchrun inside a SLURM task);
    SLURM's are used when the job's tasks are the ranks (srun / submitit); with neither, the process
    is alone.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world_size = _int(env, "WORLD_SIZE")
        return _checked(
            DistEnv(
                rank=_int(env, "RANK"),
                world_size=world_size,
                local_rank=_int(env, "LOCAL_RANK", 0),
                local_world_size=_int(env, "LOCAL_WORLD_SIZE", world_size),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=_int(env, "MASTER_PORT", 29500),
                launcher="torchrun",
                restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
            )
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world_size = _int(env, "SLURM_NTASKS")
        master_port = (
            _int(env, "MASTER_PORT")
            if "MASTER_PORT" in env
            else _SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID", 0) % _SLURM_PORT_SPAN
        )
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        master_addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
        return _checked(
            DistEnv(
                rank=_int(env, "SLURM_PROCID"),
                world_size=world_size,
                local_rank=_int(env, "SLURM_LOCALID", 0),
                local_world_size=_slurm_local_world_size(env, world_size),
                master_addr=master_addr,
                master_port=master_port,
                launcher="slurm",
            )
        )
    return DistEnv()


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list, e.g. "gpu[003-005,010],cpu1" -> "gpu003"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def init_distributed(
    dist_env: DistEnv | None = None,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DistEnv:
    """Initialises the default process group for `dist_env` (read from the environment if None).

    With world size 1 no process group is created. The backend defaults to nccl when CUDA is available
    and gloo otherwise; on CUDA the process's device is set to its local rank. Under torchrun the keys
    of each restart live under their own prefix of the rendezvous store: torchrun's store outlives a
    restart, and a rank must never read an address its predecessor published. Every collective of the
    group (and of sub-groups created later) waits at most `timeout_s` (`distributed.timeout_s`); the
    collective watchdog of `sam3.distributed.timeouts` starts here (see there for the exit bound).
    """
    dist_env = read_dist_env() if dist_env is None else dist_env
    timeouts.configure(timeout_s, start_watchdog=dist_env.is_distributed)
    if not dist_env.is_distributed:
        return dist_env
    if dist.is_initialized():
        raise RuntimeError("init_distributed called twice: the default process group already exists")
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(dist_env.local_rank)
    init_method = f"tcp://{dist_env.master_addr}:{dist_env.master_port}"
    timeout = datetime.timedelta(seconds=timeout_s)
    store = None
    if dist_env.launcher == "torchrun":
        base, _, _ = next(rendezvous(init_method, dist_env.rank, dist_env.world_size, timeout=timeout))
        store = dist.PrefixStore(f"sam3/restart_{dist_env.restart_count}", base)
    dist.init_process_group(
        backend=backend,
        init_method=None if store is not None else init_method,
        store=store,
        rank=dist_env.rank,
        world_size=dist_env.world_size,
        timeout=timeout,
        device_id=torch.device("cuda", dist_env.local_rank) if backend == "nccl" else None,
    )
    logger.info(
        "initialised %s process group: rank %d of %d (local %d, launcher %s), collective timeout %g s",
        backend,
        dist_env.rank,
        dist_env.world_size,
        dist_env.local_rank,
        dist_env.launcher,
        timeout_s,
    )
    return dist_env


def teardown_distributed() -> None:
    """Destroys the default process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """Global rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """World size, 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def new_subgroups(groups_of_ranks: Sequence[Sequence[int]]) -> dist.ProcessGroup | None:
    """Creates one process group per list of ranks and returns the one this rank belongs to.

    Every rank must call this with the same lists (group creation is collective); the groups share the
    world's collective timeout. Without a process group (world size 1) returns None, which collectives
    treat as "alone".
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    covered = sorted(r for ranks in groups_of_ranks for r in ranks)
    if covered != list(range(dist.get_world_size())):
        raise ValueError(
            f"sub-groups {list(map(list, groups_of_ranks))} must cover every rank of the world "
            f"(0..{dist.get_world_size() - 1}) exactly once"
        )
    # new groups default to torch's own timeout, not the world's: pass `distributed.timeout_s` on
    mine, _ = dist.new_subgroups_by_enumeration(
        [list(ranks) for ranks in groups_of_ranks], timeout=datetime.timedelta(seconds=timeouts.timeout_s())
    )
    return mine


class RankZeroFilter(logging.Filter):
    """Lets every record through on rank 0 and only warnings and errors on other ranks."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(rank: int, level: int = logging.INFO) -> None:
    """Configures the root logger: rank-prefixed lines, full output on rank 0, warnings elsewhere.

    Replaces any handlers already installed (Hydra installs its own), so every record prints once.
    """
    root = logging.getLogger()
    root.setLevel(level)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank} %(name)s %(levelname)s] %(message)s"))
    handler.addFilter(RankZeroFilter(rank))
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    if key not in env:
        if default is None:
            raise ValueError(f"environment variable {key} is required but not set")
        return default
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _slurm_local_world_size(env: Mapping[str, str], world_size: int) -> int:
    """Tasks on this node, from SLURM_NTASKS_PER_NODE or the first entry of SLURM_TASKS_PER_NODE ("2(x3),1")."""
    if "SLURM_NTASKS_PER_NODE" in env:
        return _int(env, "SLURM_NTASKS_PER_NODE")
    tasks_per_node = env.get("SLURM_TASKS_PER_NODE")
    if tasks_per_node:
        return int(re.match(r"\d+", tasks_per_node).group(0))  # type: ignore[union-attr]
    return world_size


def _checked(dist_env: DistEnv) -> DistEnv:
    if dist_env.world_size < 1:
        raise ValueError(f"world size must be >= 1, got {dist_env.world_size}")
    if not 0 <= dist_env.rank < dist_env.world_size:
        raise ValueError(f"rank {dist_env.rank} is outside [0, world size {dist_env.world_size})")
    if not 0 <= dist_env.local_rank < max(dist_env.local_world_size, 1):
        raise ValueError(
            f"local rank {dist_env.local_rank} is outside [0, local world size {dist_env.local_world_size})"
        )
    return dist_env
