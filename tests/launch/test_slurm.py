"""The SLURM launcher: submitit jobs (one rank per task), requeue after a signal, sweeps, sbatch scripts.

The cluster tests run the tiny demo config (56 px, 2-frame clips) on the local two-node SLURM cluster
of `conftest.py`; ranks are CPU processes talking gloo.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from submitit.helpers import DelayedSubmission

from sam3.launch.slurm import LOG_FOLDER, SlurmConfig, TrainJob, make_executor, prepare, read_requeues, submit
from sam3.train.checkpoint import checkpoint_path, list_checkpoints, load_training_state
from tests.helpers import TINY_OVERRIDES, tiny_run_config

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 12  # long enough (about 0.5 s a step) to interrupt a run in its middle
CPU_JOB = [
    "data.val=null",
    "launcher=slurm",
    "launcher.gpus_per_node=0",
    "launcher.cpus_per_task=1",
    "launcher.timeout_min=10",
]
TINY = [*TINY_OVERRIDES, "data.val=null"]


def _submit(run_dir: Path, dataset_root: Path, *overrides: str):
    cfg = tiny_run_config(run_dir, dataset_root, *CPU_JOB, *overrides)
    (job,) = submit([prepare(cfg, run_dir)], SlurmConfig.from_cfg(cfg), run_dir / LOG_FOLDER)
    return job


def _final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_training_state(checkpoint_path(run_dir, step))["model"]


def _assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


# ------------------------------------------------------------------------------ without a cluster
def test_cpu_partitions_need_an_explicit_task_count():
    with pytest.raises(ValueError, match="launcher.tasks_per_node must be set on CPU partitions"):
        SlurmConfig(gpus_per_node=0)
    assert SlurmConfig(gpus_per_node=8).ntasks_per_node == 8
    assert SlurmConfig(gpus_per_node=0, tasks_per_node=2).ntasks_per_node == 2


def test_unknown_launcher_key_is_rejected(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", tmp_path / "data", *CPU_JOB, "+launcher.gpus=2")
    with pytest.raises(ValueError, match="bad launcher config.*valid keys: name, nodes"):
        SlurmConfig.from_cfg(cfg)


def test_gpu_job_options_reach_the_batch_script(slurm_cluster, tmp_path):
    # submitit refuses to write a batch script where `srun` is missing: the local cluster provides it.
    config = SlurmConfig(
        nodes=2,
        gpus_per_node=8,
        cpus_per_task=12,
        mem_gb=480,
        timeout_min=90,
        partition="gpu",
        account="vision",
        qos="high",
        constraint="a100",
        additional_parameters={"exclusive": True},
        setup=["module load cuda"],
    )
    script = make_executor(config, tmp_path)._executor._make_submission_file_text("python -m job", "uid")
    flags = {line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")}
    expected = {"--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=12", "--mem=480GB"}
    expected |= {"--time=90", "--partition=gpu", "--account=vision", "--qos=high", "--constraint=a100"}
    expected |= {"--exclusive", "--requeue", "--signal=USR2@120", "--job-name=sam3"}
    assert expected <= flags, expected - flags
    assert f"--output={tmp_path}/%j_0_log.out" in flags
    assert "module load cuda" in script


def test_checkpoint_counts_requeues_in_the_run_dir_per_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # what submitit's JobEnvironment reads in a job
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    job = TrainJob({"run_dir": str(tmp_path)}, max_requeues=2)
    job._trainer = object()  # a live trainer is never pickled into the next submission
    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission) and isinstance(delayed.function, TrainJob)
    assert delayed.function.__getstate__() == {"config": job.config, "max_requeues": 2}
    job.checkpoint()
    assert read_requeues(tmp_path, "41") == 2
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # a new submission of the same run starts from 0
    assert read_requeues(tmp_path, "42") == 0
    job.checkpoint()
    assert read_requeues(tmp_path, "42") == 1


def test_requeue_runs_the_deferred_submitit_handler_until_the_cap(tmp_path):
    job = TrainJob({"run_dir": str(tmp_path)}, max_requeues=2)
    calls = []
    with pytest.raises(SystemExit) as exit_info:  # no result: the requeued job writes it
        job._requeue(lambda *args: calls.append(args), signal.SIGUSR2, step=5, requeues=1)
    assert exit_info.value.code == 0 and calls == [(signal.SIGUSR2, None)]
    with pytest.raises(RuntimeError, match=r"after 2 requeues \(launcher.max_requeues=2\)"):
        job._requeue(lambda *args: calls.append(args), signal.SIGUSR2, step=5, requeues=2)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------- on SLURM
@pytest.fixture(scope="module")
def reference_run(slurm_cluster, launch_shapes, tmp_path_factory):
    """A 2-task job (one node) of STEPS steps, uninterrupted: (run_dir, job)."""
    run_dir = tmp_path_factory.mktemp("slurm") / "reference"
    job = _submit(run_dir, launch_shapes, f"trainer.max_steps={STEPS}", "launcher.tasks_per_node=2")
    job.results()
    return run_dir, job


@pytest.mark.slow
def test_two_task_job_trains_and_writes_its_checkpoint(reference_run):
    run_dir, job = reference_run
    results = job.results()  # one per task, raises if a task failed
    assert [r["step"] for r in results] == [STEPS, STEPS]
    assert not any(r.get("interrupted") for r in results)
    assert [p.name for p in list_checkpoints(run_dir)] == [checkpoint_path(run_dir, STEPS).name]
    assert "2 ranks" in (run_dir / "train.log").read_text()
    assert (run_dir / "train_rank1.log").exists()


@pytest.mark.slow
def test_two_nodes_one_task_each_equal_two_tasks_on_one_node(slurm_cluster, reference_run, launch_shapes, tmp_path):
    if len(slurm_cluster.nodes) < 2:
        pytest.skip(f"the running SLURM cluster has one node ({slurm_cluster.nodes}); this test needs two")
    run_dir = tmp_path / "two_nodes"
    job = _submit(run_dir, launch_shapes, f"trainer.max_steps={STEPS}", "launcher.nodes=2", "launcher.tasks_per_node=1")
    assert [r["step"] for r in job.results()] == [STEPS, STEPS]
    node_list = job.get_info()["NodeList"]  # e.g. "node[1-2]"
    hosts = subprocess.check_output(["scontrol", "show", "hostnames", node_list], text=True).split()
    assert sorted(hosts) == slurm_cluster.nodes[:2], node_list
    _assert_same_weights(_final_weights(run_dir, STEPS), _final_weights(reference_run[0], STEPS))


@pytest.mark.slow
def test_interrupted_job_saves_requeues_and_ends_with_the_uninterrupted_weights(reference_run, launch_shapes, tmp_path):
    run_dir = tmp_path / "interrupted"
    job = _submit(run_dir, launch_shapes, f"trainer.max_steps={STEPS}", "launcher.tasks_per_node=2")
    stats = run_dir / "stats.jsonl"
    deadline = time.monotonic() + 240
    while not (stats.exists() and len(stats.read_text().splitlines()) >= 2):  # two steps done
        assert time.monotonic() < deadline, f"job {job.job_id} made no progress: {job.state}"
        assert job.state in ("PENDING", "RUNNING", "UNKNOWN"), f"job {job.job_id} is {job.state}"
        time.sleep(0.1)
    job._interrupt()  # SIGTERM then USR2, as SLURM's preemption does
    assert [r["step"] for r in job.results()] == [STEPS, STEPS]
    saved = [int(p.stem.split("_")[1]) for p in list_checkpoints(run_dir)]
    assert len(saved) == 2 and 2 <= saved[0] < STEPS and saved[1] == STEPS, saved
    log = (run_dir / "train.log").read_text()
    assert f"saved step {saved[0]} and stopping" in log
    assert f"resumed from {checkpoint_path(run_dir, saved[0])}" in log
    assert read_requeues(run_dir, job.job_id) == 1
    _assert_same_weights(_final_weights(run_dir, STEPS), _final_weights(reference_run[0], STEPS))


@pytest.mark.slow
def test_sbatch_script_trains_with_torchrun_on_two_nodes(slurm_cluster, launch_shapes, tmp_path):
    if len(slurm_cluster.nodes) < 2:
        pytest.skip(f"the running SLURM cluster has one node ({slurm_cluster.nodes}); this test needs two")
    run_dir = tmp_path / "sbatch"
    overrides = ["--config-name", "demo_shapes_video", f"run_dir={run_dir}", f"paths.dataset_root={launch_shapes}"]
    command = ["sbatch", "--wait", "--nodes=2", f"--output={tmp_path}/%j.out", "slurm/train.sbatch", *overrides]
    command += [*TINY, "trainer.max_steps=3"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{logs}"
    assert checkpoint_path(run_dir, 3).exists()
    assert "2 ranks" in (run_dir / "train.log").read_text()
    steps = [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_sweep_is_submitted_as_one_job_array_with_a_run_dir_each(slurm_cluster, launch_shapes, tmp_path):
    run_dir = tmp_path / "sweep"
    command = [
        sys.executable, "train.py", "-m", "--config-name", "demo_shapes_video", f"run_dir={run_dir}",
        f"paths.dataset_root={launch_shapes}", *TINY, *CPU_JOB, "launcher.tasks_per_node=1", "launcher.wait=true",
        "trainer.max_steps=2", "optim.optimizer.lr=1e-3,2e-3",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    submitted = re.findall(r"submitted SLURM job (\S+)", result.stdout + result.stderr)
    assert len(submitted) == 2 and {s.split("_")[0] for s in submitted} == {submitted[0].split("_")[0]}, submitted
    assert sorted(s.split("_")[1] for s in submitted) == ["0", "1"]
    for index, lr in ((0, 1e-3), (1, 2e-3)):
        element = run_dir / str(index)
        assert checkpoint_path(element, 2).exists()
        assert f"  lr: {lr}\n" in (element / "config_resolved.yaml").read_text()
