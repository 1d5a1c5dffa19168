"""Submit training and evaluation to SLURM through submitit, with preemption-safe requeue.

`python train.py ... launcher=slurm` hands the composed config to `launch`, which submits one job (or,
under a Hydra multirun, one job array with one element per sweep point). Each SLURM task is one rank:
`sam3.train.entry.run` initialises torch.distributed from SLURM's task variables (no torchrun inside).

Preemption and timeout: SLURM (or `scancel --signal USR2`) sends USR2 to every task. Submitit's own
handler would requeue and exit inside the signal handler, in the middle of a step, and only on rank 0.
`TrainJob` replaces it with a handler that only asks the trainer for a checkpoint; at the next step
boundary all ranks agree, save the same step and return an "interrupted" summary. Then rank 0 stores
the job's next state (its requeue count) in submitit's pickle and requeues the job with `scontrol`,
and every rank exits without writing a result. The requeued job runs the same callable, which resumes
from the run directory's latest checkpoint, so the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from submitit.core.utils import DelayedSubmission, UncompletedJobError, temporary_save_path

from sam3.train.entry import check_config, run
from sam3.train.trainer import Trainer

logger = logging.getLogger(__name__)

LOG_FOLDER = "slurm"  # submitit's scripts, pickles and logs, inside the run (or sweep) directory

# Configs of the current Hydra multirun, submitted together as one array by `SubmitSweep`.
_pending: list[tuple[dict[str, Any], SlurmConfig]] = []


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
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
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
        max_requeues: requeues allowed after preemption / timeout.
        requeues: requeues so far (the requeued job receives the incremented count).
    """

    def __init__(self, config: dict[str, Any], max_requeues: int, requeues: int = 0) -> None:
        self.config = config
        self.max_requeues = max_requeues
        self.requeues = requeues
        self._trainer: Trainer | None = None
        self._stop_requested = False

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "max_requeues": self.max_requeues, "requeues": self.requeues}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self) -> dict[str, Any]:
        # replaces submitit's handler, which would requeue and exit mid-step on rank 0 only
        signal.signal(submitit.JobEnvironment._usr_sig(), self._on_signal)
        summary = run(OmegaConf.create(self.config), on_trainer=self._attach)
        if summary.get("interrupted"):
            self._requeue_and_exit(int(summary["step"]))
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The submission that continues this run: the same config, one more requeue counted."""
        return DelayedSubmission(TrainJob(self.config, self.max_requeues, self.requeues + 1))

    def _attach(self, trainer: Trainer) -> None:
        self._trainer = trainer
        if self._stop_requested:  # the signal came while the model and data were being built
            trainer.request_checkpoint()

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        logger.warning("received %s: saving at the next step boundary, then requeueing", signal.Signals(signum).name)
        self._stop_requested = True
        if self._trainer is not None:
            self._trainer.request_checkpoint()

    def _requeue_and_exit(self, step: int) -> None:
        run_dir = self.config["run_dir"]
        if self.requeues >= self.max_requeues:
            raise UncompletedJobError(
                f"interrupted at step {step} after {self.requeues} requeues (launcher.max_requeues="
                f"{self.max_requeues}); the checkpoint is in {run_dir}: submit the same command to continue"
            )
        env = submitit.JobEnvironment()
        if env.global_rank == 0:
            pickle_path = env.paths.submitted_pickle
            previous = DelayedSubmission.load(pickle_path)
            delayed = self.checkpoint()
            delayed.set_timeout(previous._timeout_min, previous._timeout_countdown)
            with temporary_save_path(pickle_path) as tmp:
                delayed.dump(tmp)
            result = subprocess.run(["scontrol", "requeue", env.job_id], capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                logger.warning(
                    "requeued job %s after saving step %d (requeue %d of %d)",
                    env.job_id,
                    step,
                    self.requeues + 1,
                    self.max_requeues,
                )
            else:  # e.g. SLURM requeues a preempted job itself; the saved pickle still counts this requeue
                logger.warning("scontrol requeue %s failed: %s", env.job_id, result.stderr.strip())
        # no result file: the job is not finished, the requeued run writes it
        sys.exit(0)


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


def launch(cfg: DictConfig) -> list[submitit.Job]:
    """`train.py`'s SLURM path: submits `cfg` now, or queues it when Hydra runs a sweep.

    In a multirun each sweep point gets its own run directory (Hydra's job output directory,
    `hydra.sweep.dir/hydra.sweep.subdir`), and `SubmitSweep` submits them all as one array at the end.
    """
    config = SlurmConfig.from_cfg(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg.mode == RunMode.MULTIRUN else Path(cfg.run_dir)
    prepared = prepare(cfg, run_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        _pending.append((prepared, config))
        return []
    jobs = submit([prepared], config, run_dir.resolve() / LOG_FOLDER)
    _report(jobs, [prepared], config)
    return jobs


class SubmitSweep(Callback):
    """Hydra callback: at the end of a multirun, submits the queued sweep points as one SLURM array."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not _pending:
            return
        configs = [prepared for prepared, _ in _pending]
        slurm_config = _pending[0][1]
        if any(c != slurm_config for _, c in _pending):
            raise ValueError(
                "a SLURM job array needs the same launcher settings for every element: do not sweep launcher.*"
            )
        _pending.clear()
        folder = Path(config.hydra.sweep.dir).resolve() / LOG_FOLDER
        jobs = submit(configs, slurm_config, folder)
        _report(jobs, configs, slurm_config)


def _report(jobs: list[submitit.Job], configs: list[dict[str, Any]], config: SlurmConfig) -> None:
    """Prints each job's id, run directory and logs, then waits for them if `config.wait`."""
    tasks = config.nodes * config.ntasks_per_node
    for job, job_config in zip(jobs, configs, strict=True):
        print(f"submitted SLURM job {job.job_id} ({config.nodes} node(s) x {config.ntasks_per_node} task(s))")
        print(f"  run dir: {job_config['run_dir']}")
        print(f"  logs: {job.paths.stdout} (rank 0), {job.paths.folder}")
    if not config.wait:
        return
    for job in jobs:
        results = job.results()  # raises if any task failed
        if len(results) != tasks:
            raise RuntimeError(f"SLURM job {job.job_id} returned {len(results)} results for {tasks} tasks")
        print(f"SLURM job {job.job_id} finished at step {results[0].get('step')}")
