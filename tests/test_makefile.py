"""The Makefile picks the newest supported Python that runs (issue 19: Python 3.11 to 3.13)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _fake_python(folder: Path, name: str, works: bool) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {0 if works else 1}\n")
    path.chmod(0o755)


def _picked(path_dirs: list[Path]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MAKELEVEL")}
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    done = subprocess.run(
        [shutil.which("make"), "-s", "python"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_picks_the_newest_interpreter_that_runs(tmp_path):
    tools = tmp_path / "tools"  # what make itself runs; no interpreter of the system's PATH
    tools.mkdir()
    for tool in ("sh", "echo"):
        (tools / tool).symlink_to(shutil.which(tool))
    pythons = tmp_path / "pythons"
    pythons.mkdir()
    _fake_python(pythons, "python3.11", works=True)
    assert _picked([pythons, tools]) == "python3.11"
    _fake_python(pythons, "python3.13", works=False)  # a pyenv shim of an inactive version
    _fake_python(pythons, "python3.12", works=True)
    assert _picked([pythons, tools]) == "python3.12"
    _fake_python(pythons, "python3.13", works=True)
    assert _picked([pythons, tools]) == "python3.13"
