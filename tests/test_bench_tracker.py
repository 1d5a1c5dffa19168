"""Smoke test of `bench/tracker.py`, our side only: it runs and prints frames/s (no timing is checked)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "tracker.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_tracker", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clicks_are_distinct_and_inside_the_image():
    clicks = load_bench().clicks(16)
    assert len({tuple(c) for c in clicks}) == 16
    assert all(0 < x < 1 and 0 < y < 1 for x, y in clicks)


def test_our_side_runs_and_prints_fps(capsys):
    bench = load_bench()
    argv = ["--sizes", "224", "--objects", "1", "--frames", "224:2", "--repeats", "1", "--no-meta", "--device", "cpu"]
    threads = torch.get_num_threads()
    try:
        bench.main([*argv, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    row = re.search(r"^\s+224\s+1\s+2\s+1\s+(\d+\.\d+)\s+-\s+-$", out, re.MULTILINE)
    assert row, out
    assert float(row.group(1)) > 0
