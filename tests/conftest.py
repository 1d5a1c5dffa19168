"""Shared pytest fixtures: the location of `../shared/` (reference data), skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def require_shared(*relative: str) -> Path:
    """Path under `../shared/`, or skip the test with the reason when it is absent."""
    path = SHARED_DIR.joinpath(*relative)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (../shared/ is provided beside the checkout)")
    return path


@pytest.fixture
def reference_dir() -> Path:
    """`../shared/reference/`: the official SAM3 manifest, seeded outputs and veval toy files."""
    return require_shared("reference")
