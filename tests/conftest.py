"""Fixtures for the whole suite (reference data, generated shapes videos, a Roboflow-style COCO export) and
the `gpu` marker's skip."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from sam3.data.synthetic import generate_dataset
from tests.helpers import REFERENCE_DIR, write_roboflow_export


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` skip, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: needs a CUDA device, none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def reference_dir() -> Path:
    """`tests/assets/reference/`: Meta's state-dict manifests and seed-0 outputs."""
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def veval_toy_dir(tmp_path_factory) -> Path:
    """The public SA-Co/VEval toy files (GT, predictions, official results), decompressed into a folder."""
    folder = tmp_path_factory.mktemp("veval_toy")
    for packed in sorted((REFERENCE_DIR / "veval_toy").glob("*.json.gz")):
        with gzip.open(packed, "rb") as src, open(folder / packed.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """Six generated shapes videos (four for training, two for validation), 4 frames of 64 px."""
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, num_videos=6, num_frames=4, image_size=64, seed=0, num_val_videos=2)
    return root


@pytest.fixture(scope="session")
def roboflow_root(tmp_path_factory) -> Path:
    """A Roboflow-style COCO export (train/, valid/, test/ with `_annotations.coco.json`), 3 images each."""
    root = tmp_path_factory.mktemp("roboflow")
    write_roboflow_export(root)
    return root
