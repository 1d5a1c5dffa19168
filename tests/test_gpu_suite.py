"""`bench/gpu_suite.py`: the whole driver end to end on CPU (`--allow-cpu --quick`, tiny model), its
refusal without CUDA, and, marked `gpu`, every part's CUDA path in quick mode (no timing is checked)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("bench_gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    command = [str(ROOT / "bench" / "gpu_suite.sh"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def table_rows(stdout: str) -> list[list[str]]:
    """The table's rows as [part, metric, value, notes], header and rule left out."""
    lines = [line for line in stdout.splitlines() if " | " in line]
    return [[cell.strip() for cell in line.split("|", 3)] for line in lines[1:]]


def test_refuses_without_cuda_unless_allowed():
    """Run with every GPU hidden, so the refusal is checked on GPU machines too."""
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [str(ROOT / "bench" / "gpu_suite.sh")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "--allow-cpu" in done.stderr


def test_unknown_part_is_rejected_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        load_suite().main(["--allow-cpu", "--parts", "step,nope"])
    err = capsys.readouterr().err
    assert "['nope']" in err and "step,memory,sharding,matcher,export,aoti" in err


def test_peak_lookup_and_table():
    suite = load_suite()
    options = suite.Options(device="cpu", quick=True, peak_tflops=None, deadline=time.monotonic())
    assert suite.peak_tflops(options)[0] is None
    assert suite.peak_tflops(suite.Options("cpu", True, 500.0, 0.0)) == (500.0, "--peak-tflops")
    table = suite.format_table([suite.Row("step", "MFU", "41.0%", "note"), suite.Row("memory", "peak", "1.00")])
    lines = table.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == ["part", "metric", "value", "notes"]
    assert len({line.index("|") for line in lines if "|" in line}) == 1  # the columns line up


def test_box_masks_fill_the_boxes():
    masks = load_suite().box_masks(torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]), side=8)
    assert masks.shape == (1, 1, 8, 8)
    assert masks[0, 0, 2:6, 2:6].all() and masks.sum() == 16


@pytest.mark.slow  # six part processes and the benchmarks' own: 5 min on this shared 2-core CPU
def test_whole_suite_runs_on_cpu_in_quick_mode():
    """Every part runs its code on CPU with the tiny model and lands in one table, without an error row."""
    done = run_script("--allow-cpu", "--quick", timeout_s=850)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout)
    parts = {row[0] for row in rows}
    assert parts >= set(load_suite().PARTS) | {"suite"}, done.stdout
    errors = [row for row in rows if row[1] == "error"]
    assert not errors, done.stdout
    metrics = {(row[0], row[1]): row[2] for row in rows}
    assert float(metrics["step", "fwd+bwd s/frame (bf16)"]) > 0
    assert float(metrics["memory", "peak GiB, T=1, act ckpt on"]) > 0
    assert metrics["sharding", "W=2 vs W=1 step speedup"].endswith("x")
    assert float(metrics["matcher", "criterion fwd+bwd ms"]) > 0
    assert float(metrics["export", "exported fp32 images/s"]) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("part", ["step", "memory", "sharding", "matcher", "export", "aoti"])
def test_part_runs_on_cuda(part):
    """Each part's CUDA path in quick mode, in this process (a failure shows its traceback)."""
    suite = load_suite()
    options = suite.Options(device="cuda", quick=True, peak_tflops=None, deadline=time.monotonic() + 300)
    rows = suite.run_part(part, options)
    assert rows and all(row.part == part for row in rows)
    assert all(row.value not in ("skipped", "OOM") for row in rows), rows
    if part == "step":
        mfu = {row.metric: row for row in rows}["MFU"]
        assert mfu.value.endswith("%") or "--peak-tflops" in mfu.notes


@pytest.mark.gpu
def test_whole_suite_runs_on_cuda_in_quick_mode():
    done = run_script("--quick", timeout_s=850)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = [row for row in table_rows(done.stdout) if row[1] == "error"]
    assert not errors, done.stdout
