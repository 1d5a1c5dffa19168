"""Submit training and evaluation to SLURM through submitit, with preemption-safe requeue.

`python train.py ... launcher=slurm` hands the composed config to `launch`, which submits one job (or,
under a Hydra multirun, returns the prepared sweep point; `SubmitSweep` submits them all as one job
array). Each SLURM task is one rank: `sam3.train.entry.run` initialises torch.distributed from SLURM's
task variables (no torchrun inside).

Preemption and timeout: SLURM (or `scancel --signal USR2`) sends submitit's preemption signal
(`JobEnvironment.USR_SIG`) to every task. Submitit's handler would checkpoint and requeue at once, in the
middle of a step, and only rank 0 would stop. `TrainJob` defers that handler to a step boundary: its own
handler only asks the trainer for a checkpoint; at the next step boundary all ranks save the same step
and `run` returns an "interrupted" summary. Then every rank calls submitit's handler as the signal
would have: on rank 0 it calls `TrainJob.checkpoint` (which counts the requeue in the run directory),
stores the submission it returns and requeues the job; every rank then exits without a result. The
requeued job runs the same callable, which resumes from the run directory's latest checkpoint, so the
final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import submitit
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from submitit.helpers import DelayedSubmission

from sam3.train.entry import check_config, run
from sam3.train.trainer import Trainer

logger = logging.getLogger(__name__)

LOG_FOLDER = "slurm"  # submitit's scripts, pickles and logs, inside the run (or sweep) directory
REQUEUES_FILE = "slurm_requeues.json"  # in the run directory: {"job_id": ..., "requeues": n}


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """The `launcher:` section for SLURM (`configs/launcher/slurm.yaml`).

    Attributes:
        name: "slurm".
        nodes: nodes per job.
        gpus_per_node: GPUs requested per node (0 on CPU partitions).
        tasks_per_node: ranks per node; None means one per GPU (required when gpus_per_node is 0).
        cpus_per_task: CPU cores per rank (data workers run inside them).
        mem_gb: memory per node in GB; None leaves the partition's default.
        timeout_min: time limit of each (re)queued run, in minutes.
        partition, account, qos, constraint: the sbatch options of those names (None = not passed).
        job_name: SLURM job name.
        signal_delay_s: USR2 is sent this many seconds before the time limit; one step plus a
            checkpoint write must fit in it.
        max_requeues: requeues (after preemption or timeout) allowed per submission.
        array_parallelism: most array elements running at once in a sweep.
        setup: shell lines run in the batch script before the tasks start (module load, ...).
        additional_parameters: other sbatch options, e.g. {exclusive: true, mail-type: END}.
        wait: block until the job(s) finish and raise if one failed.
    """

    name: str = "slurm"
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int = 8
    mem_gb: int | None = None
    timeout_min: int = 1440
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str = "sam3"
    signal_delay_s: int = 120
    max_requeues: int = 10
    array_parallelism: int = 256
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    wait: bool = False

    def __post_init__(self) -> None:
        if self.name != "slurm":
            raise ValueError(f"launcher.name={self.name!r}: this launcher is 'slurm'")
        if self.tasks_per_node is None and self.gpus_per_node < 1:
            raise ValueError(
                "launcher.tasks_per_node must be set on CPU partitions (launcher.gpus_per_node=0): "
                "it is the number of ranks per node, e.g. launcher.tasks_per_node=2"
            )
        if self.nodes < 1 or self.ntasks_per_node < 1 or self.cpus_per_task < 1 or self.max_requeues < 0:
            raise ValueError(
                "launcher.nodes, tasks_per_node and cpus_per_task must be >= 1 and max_requeues >= 0; "
                f"got nodes={self.nodes} tasks_per_node={self.ntasks_per_node} "
                f"cpus_per_task={self.cpus_per_task} max_requeues={self.max_requeues}"
            )

    @property
    def ntasks_per_node(self) -> int:
        """Ranks per node: the explicit value, else one per GPU."""
        return self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> SlurmConfig:
        values = OmegaConf.to_container(cfg.launcher, resolve=True)
        try:
            return cls(**values)
        except TypeError as error:
            valid = ", ".join(cls.__dataclass_fields__)
            raise ValueError(f"bad launcher config: {error}; valid keys: {valid}") from None


def make_executor(config: SlurmConfig, folder: str | Path) -> submitit.AutoExecutor:
    """A submitit SLURM executor with `config`'s resources, writing its files under `folder`."""
    # submitit stops requeueing after max_num_timeout timeouts; max_requeues is the tighter cap
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=config.max_requeues)
    params: dict[str, Any] = {
        "name": config.job_name,
        "nodes": config.nodes,
        "tasks_per_node": config.ntasks_per_node,
        "cpus_per_task": config.cpus_per_task,
        "timeout_min": config.timeout_min,
        "slurm_signal_delay_s": config.signal_delay_s,
        "slurm_array_parallelism": config.array_parallelism,
        # one intra-op thread pool per rank sized to its cores, not to the whole node
        "slurm_setup": ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}", *config.setup],
        # requeue-able even where the cluster's default is not (JobRequeue=0)
        "slurm_additional_parameters": {"requeue": True, **config.additional_parameters},
    }
    if config.gpus_per_node > 0:
        params["gpus_per_node"] = config.gpus_per_node
    if config.mem_gb is not None:
        params["mem_gb"] = config.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(config, key) is not None:
            params[f"slurm_{key}"] = getattr(config, key)
    executor.update_parameters(**params)
    return executor


class TrainJob(submitit.helpers.Checkpointable):
    """The callable each SLURM task runs: one rank of `sam3.train.entry.run` on a resolved config.

    Args:
        config: the run's config, resolved to plain containers (no Hydra resolvers needed remotely).
        max_requeues: requeues allowed after preemption / timeout, per SLURM job.
    """

    def __init__(self, config: dict[str, Any], max_requeues: int) -> None:
        self.config = config
        self.max_requeues = max_requeues
        self._trainer: Trainer | None = None
        self._stop_requested = False

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "max_requeues": self.max_requeues}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self) -> dict[str, Any]:
        signum = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        submitit_handler = signal.getsignal(signum)  # on rank 0: checkpoint(), requeue and exit, at once
        signal.signal(signum, self._on_signal)
        # read before the run: only rank 0 counts a requeue, and only after every rank has started
        requeues = read_requeues(self.config["run_dir"], submitit.JobEnvironment().job_id)
        summary = run(OmegaConf.create(self.config), on_trainer=self._attach)
        if summary.get("interrupted"):
            self._requeue(submitit_handler, signum, int(summary["step"]), requeues)
        return summary

    def checkpoint(self) -> DelayedSubmission:
        """The submission that continues this run (this callable again); counts the requeue in the run dir."""
        job_id = submitit.JobEnvironment().job_id
        run_dir = Path(self.config["run_dir"])
        requeues = read_requeues(run_dir, job_id) + 1
        tmp = run_dir / f".{REQUEUES_FILE}.tmp"
        tmp.write_text(json.dumps({"job_id": job_id, "requeues": requeues}))
        os.replace(tmp, run_dir / REQUEUES_FILE)
        logger.warning("requeueing job %s (requeue %d of %d)", job_id, requeues, self.max_requeues)
        return super().checkpoint()

    def _attach(self, trainer: Trainer) -> None:
        self._trainer = trainer
        if self._stop_requested:  # the signal came while the model and data were being built
            trainer.request_checkpoint()

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        logger.warning("received %s: saving at the next step boundary, then requeueing", signal.Signals(signum).name)
        self._stop_requested = True
        if self._trainer is not None:
            self._trainer.request_checkpoint()

    def _requeue(self, submitit_handler: Callable[..., Any], signum: int, step: int, requeues: int) -> NoReturn:
        """Runs submitit's deferred signal handler after the save at `step`, then exits without a result."""
        if requeues >= self.max_requeues:
            raise RuntimeError(
                f"interrupted at step {step} after {requeues} requeues (launcher.max_requeues="
                f"{self.max_requeues}); the checkpoint is in {self.config['run_dir']}: submit the same command "
                "to continue"
            )
        try:
            submitit_handler(signum, None)  # rank 0 exits inside it once requeued; other ranks return
        except subprocess.CalledProcessError as error:  # e.g. SLURM requeues a preempted job itself
            logger.warning("scontrol requeue failed: %s", error)
        sys.exit(0)  # no result file: the job is not finished, the requeued run writes it


def read_requeues(run_dir: str | Path, job_id: str) -> int:
    """Requeues of SLURM job `job_id` so far, as counted in `run_dir` (0 for a new submission)."""
    path = Path(run_dir) / REQUEUES_FILE
    if not path.exists():
        return 0
    record = json.loads(path.read_text())
    return int(record["requeues"]) if record["job_id"] == job_id else 0


def prepare(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """`cfg` with `run_dir` set, every interpolation resolved, as plain containers for pickling."""
    check_config(cfg)
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir.resolve())
    return OmegaConf.to_container(cfg, resolve=True)


def submit(configs: list[dict[str, Any]], config: SlurmConfig, folder: Path) -> list[submitit.Job]:
    """Submits one job per prepared config: a single job, or one job array for several."""
    executor = make_executor(config, folder)
    if len(configs) == 1:
        return [executor.submit(TrainJob(configs[0], config.max_requeues))]
    with executor.batch():
        jobs = [executor.submit(TrainJob(c, config.max_requeues)) for c in configs]
    return jobs


@dataclass(frozen=True)
class SweepPoint:
    """One point of a Hydra multirun, prepared for submission: what `launch` returns to `SubmitSweep`."""

    config: dict[str, Any]
    slurm: SlurmConfig


def launch(cfg: DictConfig) -> SweepPoint | list[submitit.Job]:
    """`train.py`'s SLURM path: submits `cfg` now, or returns its sweep point when Hydra runs a sweep.

    In a multirun each sweep point gets its own run directory (Hydra's job output directory,
    `hydra.sweep.dir/hydra.sweep.subdir`), and `SubmitSweep` submits them all as one array at the end.
    """
    config = SlurmConfig.from_cfg(cfg)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return SweepPoint(prepare(cfg, Path(hydra_cfg.runtime.output_dir)), config)
    prepared = prepare(cfg, Path(cfg.run_dir))
    jobs = submit([prepared], config, Path(prepared["run_dir"]) / LOG_FOLDER)
    _report(jobs, [prepared], config)
    return jobs


class SubmitSweep(Callback):
    """Hydra callback: collects the sweep points `launch` returns and submits them as one SLURM array."""

    def __init__(self) -> None:
        self._points: list[SweepPoint] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, SweepPoint):
            self._points.append(job_return.return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        points, self._points = self._points, []
        if not points:
            return
        if any(p.slurm != points[0].slurm for p in points):
            raise ValueError(
                "a SLURM job array needs the same launcher settings for every element: do not sweep launcher.*"
            )
        configs = [p.config for p in points]
        folder = Path(config.hydra.sweep.dir).resolve() / LOG_FOLDER
        _report(submit(configs, points[0].slurm, folder), configs, points[0].slurm)


def _report(jobs: list[submitit.Job], configs: list[dict[str, Any]], config: SlurmConfig) -> None:
    """Logs each job's id, run directory and logs, then waits for them if `config.wait`."""
    tasks = config.nodes * config.ntasks_per_node
    for job, job_config in zip(jobs, configs, strict=True):
        logger.info(
            "submitted SLURM job %s (%d node(s) x %d task(s))\n  run dir: %s\n  logs: %s (rank 0), %s",
            job.job_id,
            config.nodes,
            config.ntasks_per_node,
            job_config["run_dir"],
            job.paths.stdout,
            job.paths.folder,
        )
    if not config.wait:
        return
    for job in jobs:
        results = job.results()  # raises if any task failed
        if len(results) != tasks:
            raise RuntimeError(f"SLURM job {job.job_id} returned {len(results)} results for {tasks} tasks")
        logger.info("SLURM job %s finished at step %s", job.job_id, results[0].get("step"))
