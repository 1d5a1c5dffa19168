"""Faults a run survives: checkpoints verified on load, failed saves, SIGTERM / SIGUSR1, elastic restarts.

The fast tests exercise `sam3.train.checkpoint` and `sam3.train.signals` in this process. The slow ones
run `train.py` under torchrun (2 gloo CPU ranks, the tiny model) as real processes, inject the fault
(a SIGKILLed rank, a truncated newest checkpoint, SIGTERM) and compare the final weights bit for bit
with an uninterrupted run of the same command.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sam3.train.checkpoint as checkpoint_module
from sam3.train.checkpoint import (
    CheckpointSaveError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    manifest_path,
    save_checkpoint,
    verify_checkpoint,
)
from sam3.train.signals import EXIT_CHECKPOINTED, StopOnSignal
from tests.helpers import TINY_OVERRIDES, tiny_run_config, train_weights

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 12  # with a checkpoint every 2 steps: enough steps after the first checkpoint to inject a fault
RUN_TIMEOUT_S = 240


def _save(run_dir: Path, step: int, keep_last: int = 0) -> Path:
    return save_checkpoint(run_dir, step, {"model": {"w": torch.full((64,), float(step))}}, keep_last=keep_last)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


# ------------------------------------------------------------------------------ in this process
def test_truncated_or_corrupt_newest_checkpoint_is_reported_and_skipped(tmp_path, caplog):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    _truncate(checkpoint_path(tmp_path, 6))
    data = bytearray(checkpoint_path(tmp_path, 4).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    checkpoint_path(tmp_path, 4).write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="sam3.train.checkpoint"):
        assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 2)
    assert f"skipping checkpoint {checkpoint_path(tmp_path, 6)}: " in caplog.text and "truncated" in caplog.text
    assert f"skipping checkpoint {checkpoint_path(tmp_path, 4)}: " in caplog.text and "corrupt" in caplog.text
    assert verify_checkpoint(checkpoint_path(tmp_path, 2)) is None
    _truncate(checkpoint_path(tmp_path, 2))
    with caplog.at_level("WARNING", logger="sam3.train.checkpoint"):
        assert latest_checkpoint(tmp_path) is None
    assert f"none of the 3 checkpoints in {tmp_path / 'checkpoints'} is intact" in caplog.text


def test_checkpoint_without_manifest_is_valid_only_if_it_loads(tmp_path):
    old, torn = _save(tmp_path, 2), _save(tmp_path, 4)
    manifest_path(old).unlink()  # written before manifests existed
    manifest_path(torn).unlink()
    _truncate(torn)
    assert verify_checkpoint(old) is None
    assert "no manifest and does not load" in verify_checkpoint(torn)
    assert latest_checkpoint(tmp_path) == old


def test_failed_save_keeps_the_previous_checkpoints_and_raises(tmp_path, monkeypatch):
    for step in (2, 4):
        _save(tmp_path, step, keep_last=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    assert sorted(before) == ["step_00000004.json", "step_00000004.pt"]

    def disk_full(obj, file):
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointSaveError, match=r"step_00000006.pt: OSError: \[Errno 28\] No space left"):
        _save(tmp_path, 6, keep_last=1)
    after = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    assert after == before  # nothing deleted, nothing half-written left behind
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 4)


def test_keep_last_counts_only_intact_checkpoints(tmp_path):
    for step in (2, 4):
        _save(tmp_path, step)
    _truncate(checkpoint_path(tmp_path, 4))
    _save(tmp_path, 6, keep_last=2)  # 4 is torn: the two intact ones are 2 and 6
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]
    _save(tmp_path, 8, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000008.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000008.json", "step_00000008.pt"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failed_save_stops_the_run_with_the_error(tmp_path, shapes_root, monkeypatch):
    real_save, calls = torch.save, {"n": 0}

    def disk_full_on_the_second_save(obj, file):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, file)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full_on_the_second_save)
    cfg = tiny_run_config(tmp_path, shapes_root, "data.val=null", "trainer.max_steps=6", "trainer.checkpoint_every=2")
    with pytest.raises(CheckpointSaveError, match="step_00000004.pt: OSError"):
        train_weights(cfg)
    assert list_checkpoints(tmp_path) == [checkpoint_path(tmp_path, 2)]
    assert verify_checkpoint(checkpoint_path(tmp_path, 2)) is None


class _FakeTrainer:
    def __init__(self) -> None:
        self.requests = 0

    def request_checkpoint(self) -> None:
        self.requests += 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_request_a_checkpoint_also_before_the_trainer_exists(signum):
    previous = signal.getsignal(signum)
    trainer = _FakeTrainer()
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signum)  # while "building": remembered
        assert stop.received == signum
        stop.attach(trainer)
        assert trainer.requests == 1
        os.kill(os.getpid(), signum)
        assert trainer.requests == 2
    assert signal.getsignal(signum) == previous
    assert EXIT_CHECKPOINTED not in (0, 1)


# ------------------------------------------------------------------------ real torchrun processes
def _torchrun(run_dir: Path, dataset_root: Path, *flags: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "--monitor-interval=0.1", *flags, "train.py", "--config-name", "demo_shapes_video",
        f"run_dir={run_dir}", f"paths.dataset_root={dataset_root}", "model=tiny", *TINY_OVERRIDES,
        "data.val=null", f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    with open(run_dir.parent / f"{run_dir.name}.torchrun.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, run_dir: Path) -> int:
    try:
        return process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"torchrun did not finish in {RUN_TIMEOUT_S} s:\n{_output(run_dir)}")


def _output(run_dir: Path) -> str:
    return (run_dir.parent / f"{run_dir.name}.torchrun.log").read_text(errors="replace")[-6000:]


def _wait_for(condition, process: subprocess.Popen, run_dir: Path, what: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"torchrun ended or timed out before {what}:\n{_output(run_dir)}")
        time.sleep(0.02)


def _worker_pid(agent_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=`rank` (a child of the agent process), if it runs."""
    try:
        children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = checkpoint_path(run_dir, STEPS)
    assert verify_checkpoint(path) is None
    return load_training_state(path)["model"]


def _assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference_run(shapes_root, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank torchrun run every fault is compared with."""
    run_dir = tmp_path_factory.mktemp("fault_tolerance") / "reference"
    run_dir.mkdir()
    process = _torchrun(run_dir, shapes_root)
    assert _finish(process, run_dir) == 0, _output(run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_rank_restarts_the_world_and_ends_with_the_uninterrupted_weights(reference_run, shapes_root, tmp_path):
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    process = _torchrun(run_dir, shapes_root, "--max-restarts=1")
    _wait_for(
        lambda: any(manifest_path(p).exists() for p in list_checkpoints(run_dir)), process, run_dir, "a checkpoint"
    )
    victim = _worker_pid(process.pid, rank=1)
    assert victim is not None, _output(run_dir)
    os.kill(victim, signal.SIGKILL)
    assert _finish(process, run_dir) == 0, _output(run_dir)
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log, "the kill came too late: the run had finished"
    _assert_same_weights(_final_weights(run_dir), _final_weights(reference_run))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_truncated_newest_checkpoint_resumes_from_the_previous_one(reference_run, shapes_root, tmp_path):
    run_dir = tmp_path / "truncated"
    shutil.copytree(reference_run, run_dir)
    newest = checkpoint_path(run_dir, STEPS)
    _truncate(newest)
    process = _torchrun(run_dir, shapes_root)
    assert _finish(process, run_dir) == 0, _output(run_dir)
    log = (run_dir / "train.log").read_text()
    assert f"skipping checkpoint {newest}: " in log
    assert f"resumed from {checkpoint_path(run_dir, STEPS - 2)}" in log
    _assert_same_weights(_final_weights(run_dir), _final_weights(reference_run))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_saves_on_every_rank_exits_75_and_resumes_exactly(reference_run, shapes_root, tmp_path):
    run_dir = tmp_path / "sigterm"
    run_dir.mkdir()
    stats = run_dir / "stats.jsonl"
    process = _torchrun(run_dir, shapes_root)
    _wait_for(lambda: stats.exists() and len(stats.read_text().splitlines()) >= 3, process, run_dir, "step 3")
    os.kill(process.pid, signal.SIGTERM)  # torchrun forwards it to every worker
    _finish(process, run_dir)  # torchrun itself exits 1 after a signal; the workers' status is in its log
    output = _output(run_dir)
    saved = [int(p.stem.split("_")[1]) for p in list_checkpoints(run_dir)]
    assert saved and 3 <= saved[-1] < STEPS, (saved, output)
    assert verify_checkpoint(checkpoint_path(run_dir, saved[-1])) is None
    for rank in (0, 1):
        assert f"rank{rank} sam3.train WARNING] stopped on a signal at step {saved[-1]}" in output, output
        assert f"exit {EXIT_CHECKPOINTED}" in output

    process = _torchrun(run_dir, shapes_root)
    assert _finish(process, run_dir) == 0, _output(run_dir)
    assert f"resumed from {checkpoint_path(run_dir, saved[-1])}" in (run_dir / "train.log").read_text()
    _assert_same_weights(_final_weights(run_dir), _final_weights(reference_run))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_to_a_single_process_run_exits_with_its_own_status(shapes_root, tmp_path):
    run_dir = tmp_path / "single"
    command = [
        sys.executable, "train.py", "--config-name", "demo_shapes_video", f"run_dir={run_dir}",
        f"paths.dataset_root={shapes_root}", "model=tiny", *TINY_OVERRIDES, "data.val=null",
        f"trainer.max_steps={STEPS * 10}", "trainer.checkpoint_every=0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stats = run_dir / "stats.jsonl"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (stats.exists() and stats.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGUSR1)
    _, err = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == EXIT_CHECKPOINTED, err.decode()
    (saved,) = list_checkpoints(run_dir)
    assert verify_checkpoint(saved) is None and 1 <= load_training_state(saved)["step"] < STEPS * 10


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(shapes_root, tmp_path):
    run_dir = tmp_path / "one_rank"
    run_dir.mkdir()
    stats = run_dir / "stats.jsonl"
    process = _torchrun(run_dir, shapes_root)
    _wait_for(lambda: stats.exists() and len(stats.read_text().splitlines()) >= 3, process, run_dir, "step 3")
    os.kill(_worker_pid(process.pid, rank=1), signal.SIGTERM)
    assert _finish(process, run_dir) != 0  # its workers exited 75: a failure to torchrun
    output = _output(run_dir)
    stops = dict(re.findall(r"rank(\d) sam3.train WARNING\] stopped on a signal at step (\d+)", output))
    assert stops.keys() == {"0", "1"} and len(set(stops.values())) == 1, output
    assert verify_checkpoint(checkpoint_path(run_dir, int(stops["0"]))) is None
    assert output.count(f"exitcode  : {EXIT_CHECKPOINTED} ") == 2, output
