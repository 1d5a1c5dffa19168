"""Fixtures of the data tests: a small generated shapes dataset shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam3.data.synthetic import generate_dataset

SHAPES = {"num_videos": 6, "num_frames": 6, "image_size": 64, "seed": 3, "num_val_videos": 2}


@pytest.fixture(scope="session")
def shapes_params() -> dict:
    """The generation arguments of `shapes_dir`."""
    return dict(SHAPES)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated shapes dataset (train/ and val/), written once per session; do not modify it."""
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(out, **SHAPES)
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """torchvision 0.29 deprecates its image codecs (the issue asks for torchvision.io); silence that here."""
    here = Path(__file__).parent
    marker = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(marker)
