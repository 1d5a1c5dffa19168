"""Collective timeouts without processes: the operation record, the error that names it, the watchdog
(in a child interpreter, since it ends its process) and the `distributed:` config section."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from sam3.distributed import timeouts
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.distributed.timeouts import CollectiveError, exit_bound_s, grace_s, operation, set_step
from sam3.train.entry import DistributedConfig
from sam3.train.sections import build_section
from tests.helpers import REPO_ROOT


@pytest.fixture(autouse=True)
def _no_step():
    yield
    set_step(None)


def test_a_backend_error_names_the_operations_and_the_step():
    set_step(12)
    with pytest.raises(CollectiveError, match=r"checkpoint > barrier after the write at step 12 failed after") as info:
        with operation("checkpoint", watched=False):
            with operation("barrier after the write"):
                raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 4000ms for recv")
    assert "distributed.timeout_s" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_gloo_s_pair_closure_in_ddp_backward_counts_as_a_backend_error():
    set_step(3)
    with pytest.raises(CollectiveError, match=r"forward/backward at step 3 failed after .* pair closure"):
        with operation("forward/backward", watched=False):
            raise RuntimeError("Application timeout caused pair closure")


def test_other_errors_pass_through_unchanged_and_are_logged_once_with_the_step(caplog):
    set_step(4)
    with pytest.raises(ValueError, match="bad shape"):
        with operation("frame gather"):
            raise ValueError("bad shape")
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes"):
        with operation("forward/backward", watched=False):
            with operation("all-reduce of the loss counts"):
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert timeouts.current_operation() is None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors
    assert "frame gather at step 4 failed after" in errors[0] and "ValueError: bad shape" in errors[0]
    assert "forward/backward > all-reduce of the loss counts at step 4" in errors[1]


def test_current_operation_tracks_the_innermost_with_its_step():
    set_step(3)
    with operation("validation", watched=False):
        with operation("gather of predictions"):
            assert timeouts.current_operation() == "validation > gather of predictions at step 3"
        assert timeouts.current_operation() == "validation at step 3"
    assert timeouts.current_operation() is None


def test_the_bound_is_the_timeout_plus_its_grace():
    assert grace_s(4) == 5.0 and exit_bound_s(4) == 9.0
    assert grace_s(600) == 60.0 and exit_bound_s(600) == 660.0


@pytest.mark.timeout(60)
def test_the_watchdog_ends_a_process_stuck_in_a_watched_collective():
    code = textwrap.dedent(
        """
        import logging, time
        from sam3.distributed import timeouts
        logging.basicConfig(level=logging.INFO)
        timeouts.configure(1.0, start_watchdog=True)
        timeouts.set_step(7)
        with timeouts.operation("forward/backward", watched=False):
            time.sleep(4.0)  # compute: not watched
        with timeouts.operation("all-reduce of the loss counts"):
            time.sleep(60)  # a peer that never comes
        """
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=45)
    elapsed = time.monotonic() - start
    assert done.returncode == timeouts.EXIT_CODE_HUNG, done.stderr
    assert "all-reduce of the loss counts at step 7 did not complete" in done.stderr
    # 4 s of unwatched compute, then the watchdog fires at 1 s + 5 s / 2 (polled every 0.5 s); start-up aside
    assert 4.0 + 3.5 <= elapsed <= 4.0 + exit_bound_s(1.0) + 10.0, elapsed


def test_the_distributed_section_defaults_and_checks():
    assert build_section(DistributedConfig, {}, "distributed").timeout_s == timeouts.DEFAULT_TIMEOUT_S
    assert build_section(DistributedConfig, {"timeout_s": 4}, "distributed").timeout_s == 4
    with pytest.raises(ValueError, match="distributed.timeout_s=0"):
        build_section(DistributedConfig, {"timeout_s": 0}, "distributed")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['timeout'\]"):
        build_section(DistributedConfig, {"timeout": 4}, "distributed")


def _late_frame_gather(late_rank: int, late_s: float) -> str:
    """Rank `late_rank` joins a frame gather `late_s` seconds late; the other reads the frame."""
    from sam3.distributed.env import get_rank
    from sam3.distributed.frame_shard import build_frame_group

    group = build_frame_group()
    set_step(5)
    if get_rank() == late_rank:
        time.sleep(late_s)
    buffer = group.new_buffer()
    group.gather_into(buffer, [0, 1], {"x": torch.ones(3)})
    try:
        buffer.get(1 - get_rank())
    except CollectiveError as error:
        return str(error)
    return "completed"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_late_peer_makes_the_async_frame_gather_fail_naming_it():
    results = run_on_local_ranks(_late_frame_gather, 2, 1, 6.0, timeout_s=90, collective_timeout_s=2.0)
    assert re.match(
        r"rank 0: frame gather: wait at step 5 failed after [0-9.]+ s \(distributed.timeout_s=2\)", results[0]
    )
