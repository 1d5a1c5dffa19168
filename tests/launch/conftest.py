"""A real SLURM cluster on this machine for the launcher tests, started only where asked for.

The cluster comes from `local_slurm.sh` beside this file (two virtual nodes). Tests that need it run
when `CI` is set or the user opted in with `SAM3_TEST_SLURM=1`, and skip with the reason otherwise, or
where SLURM cannot run (the script's exit status 77: not root, packages missing and not installable).
A cluster this fixture started is stopped at the end; one that was already running is left as it is.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sam3.data.synthetic import generate_dataset

LOCAL_SLURM = Path(__file__).resolve().with_name("local_slurm.sh")
UNAVAILABLE = 77  # local_slurm.sh's exit status where SLURM cannot run on this machine


@dataclass(frozen=True)
class Cluster:
    """The running cluster: its node names (`sinfo`)."""

    nodes: list[str]


def _wanted() -> bool:
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("SAM3_TEST_SLURM") == "1"


def _script(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    command = ["bash", str(LOCAL_SLURM), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Starts the local two-node SLURM cluster (or reuses a running one) and sets SLURM_CONF."""
    if not _wanted():
        pytest.skip(
            "SLURM tests start a local SLURM cluster (root; apt-get if missing): "
            "set SAM3_TEST_SLURM=1 (or CI) to run them"
        )
    env = {**os.environ, "LOCAL_SLURM_NODES": "2", "LOCAL_SLURM_CRED_EXPIRE": "5"}
    started = _script("status", env=env, check=False).returncode != 0
    if started:
        result = _script("up", env=env, check=False)
        if result.returncode == UNAVAILABLE:
            reason = (result.stderr.strip().splitlines() or ["local_slurm.sh gave no reason"])[-1]
            pytest.skip(f"no local SLURM cluster: {reason}")
        if result.returncode != 0:
            pytest.fail(f"local_slurm.sh up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    exports = _script("env", env=env).stdout.strip()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = exports.split("SLURM_CONF=", 1)[1].strip().strip("'\"")
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()
    try:
        yield Cluster(nodes=sorted(set(nodes)))
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if started:
            _script("down", env=env, check=False)


@pytest.fixture(scope="session")
def launch_shapes(tmp_path_factory) -> Path:
    """The tiny generated shapes dataset of the trainer tests."""
    root = tmp_path_factory.mktemp("launch_shapes")
    generate_dataset(root, num_videos=6, num_frames=4, image_size=64, seed=0, num_val_videos=2)
    return root
