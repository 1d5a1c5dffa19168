"""The synthetic SA-Co/VEval ground truth of `tests.helpers`, as a fixture for the evaluation tests."""

from __future__ import annotations

import pytest

from tests.helpers import make_veval_gt


@pytest.fixture
def veval_gt() -> dict:
    return make_veval_gt(0)
