"""Commands as a new user types them: mistakes end in a message that says the fix, and a checkpoint of
a training run works with the tools as is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from sam3.train.checkpoint import latest_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_without_required_paths_names_them_and_how_to_set_them(tmp_path):
    done = _run("train.py", "--config-name", "roboflow_video_ft", f"run_dir={tmp_path / 'run'}")
    assert done.returncode != 0
    assert "required config values are not set" in done.stderr
    assert "paths.checkpoint=/path/to/sam3.pt" in done.stderr
    assert "paths.dataset_root=/data/my_videos" in done.stderr
    assert "Traceback" not in done.stderr and "MissingMandatoryValue" not in done.stderr


def test_demo_config_without_its_data_says_how_to_generate_it(tmp_path):
    missing = tmp_path / "no_shapes_here"
    done = _run(
        "train.py", "--config-name", "demo_shapes_video", f"run_dir={tmp_path / 'run'}", f"paths.dataset_root={missing}"
    )
    assert done.returncode != 0
    assert "not found" in done.stderr
    assert "make demo" in done.stderr
    assert f"python -m sam3.data.synthetic --out {missing}" in done.stderr


def test_unknown_keys_are_rejected_naming_the_valid_ones(tmp_path, shapes_root):
    done = _run(
        "train.py",
        "--config-name",
        "demo_shapes_video",
        f"run_dir={tmp_path / 'run'}",
        f"paths.dataset_root={shapes_root}",
        "+eval.linking.max_gaps=2",
    )
    assert done.returncode != 0
    assert "eval.linking: unknown key(s) ['max_gaps']" in done.stderr


def test_predict_builds_the_model_a_training_checkpoint_was_trained_with(tmp_path, shapes_root):
    trained = _run(
        "train.py",
        "--config-name",
        "demo_shapes_video",
        f"run_dir={tmp_path / 'run'}",
        f"paths.dataset_root={shapes_root}",
        "data.image_size=56",
        "data.clips_per_batch=1",
        "trainer.max_steps=2",
        "trainer.checkpoint_every=2",
        "trainer.eval_at_start=false",
        "eval.max_videos=1",
        "loss.masks.num_points=64",
    )
    assert trained.returncode == 0, trained.stderr
    checkpoint = latest_checkpoint(tmp_path / "run")
    image_path = tmp_path / "frame.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(image_path)
    overlay = tmp_path / "overlay.png"
    done = _run(
        "-m",
        "sam3.tools.predict",
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(image_path),
        "--prompt",
        "red circle",
        "--threshold",
        "0",
        "--out",
        str(overlay),
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("16 detections of 'red circle'")  # the tiny model's 16 queries
    assert Image.open(overlay).size == (80, 60)
