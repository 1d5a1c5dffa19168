"""A tiny generated shapes dataset and the composed tiny demo config, shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sam3.data.synthetic import generate_dataset
from sam3.model_builder import config_dir
from sam3.tools.check_frame_sharding import DETERMINISTIC_OVERRIDES

# The demo config shrunk for tests: 56 px, 2-frame clips, few prompts and mask points.
TINY_OVERRIDES = [
    "data.image_size=56",
    "data.clip_len=2",
    "data.clips_per_batch=1",
    "data.train.prompts.max_prompts=2",
    "loss.masks.num_points=64",
    "trainer.log_every=1",
    "trainer.eval_at_start=false",
    "optim.schedule.warmup_steps=1",
]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, num_videos=6, num_frames=4, image_size=64, seed=0, num_val_videos=2)
    return root


def tiny_run_config(run_dir: Path, dataset_root: Path, *overrides: str):
    """The demo config with `TINY_OVERRIDES`, a run directory and a dataset."""
    base = [f"run_dir={run_dir}", f"paths.dataset_root={dataset_root}", *TINY_OVERRIDES]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("demo_shapes_video", overrides=[*base, *overrides])


def deterministic(*overrides: str) -> list[str]:
    """Overrides for exact comparisons: no dropout / drop-path, uniform mask points."""
    return [*DETERMINISTIC_OVERRIDES, "+loss.masks.importance_sample_ratio=0.0", *overrides]
