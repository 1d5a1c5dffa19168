"""Helpers the tests share: paths in the checkout, the tiny run config, a synthetic SA-Co/VEval ground truth.

Fixtures stay in the `conftest.py` files; test modules import plain functions and constants from here
(`from tests.helpers import ...`), never from a conftest.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from pycocotools import mask as coco_mask

import sam3.train.trainer as trainer_module
from sam3.tools.check_frame_sharding import DETERMINISTIC_OVERRIDES
from sam3.train.entry import build_trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
# Meta's state-dict manifests and seed-0 outputs, copied from the shared reference (see its README.md).
REFERENCE_DIR = Path(__file__).resolve().parent / "assets" / "reference"
# The project's shared reference folder (beside the checkout), read where present and not copied.
SHARED_REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def reference_file(name: str) -> Path | None:
    """A reference file from the copied assets, else from the shared folder; None where neither has it."""
    for folder in (REFERENCE_DIR, SHARED_REFERENCE_DIR):
        if (folder / name).is_file():
            return folder / name
    return None


# ------------------------------------------------------------------------------------- tiny run config
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


def tiny_run_config(run_dir: Path, dataset_root: Path, *overrides: str, config_name: str = "demo_shapes_video"):
    """An experiment config with the tiny model, `TINY_OVERRIDES`, a run directory and a dataset."""
    base = [f"run_dir={run_dir}", f"paths.dataset_root={dataset_root}", "model=tiny", *TINY_OVERRIDES]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=[*base, *overrides])


def deterministic(*overrides: str) -> list[str]:
    """Overrides for exact comparisons: no dropout / drop-path, uniform mask points."""
    return [*DETERMINISTIC_OVERRIDES, "+loss.masks.importance_sample_ratio=0.0", *overrides]


def train_weights(cfg) -> dict[str, torch.Tensor]:
    """Runs `cfg` in this process on CPU and returns the final model state dict."""
    trainer = build_trainer(cfg, torch.device("cpu"))
    trainer.run()
    return trainer.model.state_dict()


# ------------------------------------------------------------------------- synthetic SA-Co/VEval data
HEIGHT, WIDTH, NUM_FRAMES = 32, 48, 6


def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """(HEIGHT, WIDTH) bool filled ellipse."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1


def encode(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def make_veval_gt(seed: int = 0) -> dict:
    """Two videos, three phrases with 1-2 moving ellipses each (some frames absent), two negative pairs."""
    rng = np.random.default_rng(seed)
    videos = [
        {"id": v, "file_names": [f"v{v}/{t:05d}.jpg" for t in range(NUM_FRAMES)], "height": HEIGHT, "width": WIDTH}
        for v in (3, 8)
    ]
    annotations, ann_id = [], 11
    for video in videos:
        for category in (1, 2, 4):
            for _ in range(int(rng.integers(1, 3))):
                cx, cy = rng.uniform(8, WIDTH - 8), rng.uniform(6, HEIGHT - 6)
                a, b = rng.uniform(3, 7), rng.uniform(3, 6)
                dx, dy = rng.uniform(-1.5, 1.5), rng.uniform(-1, 1)
                absent = set(rng.choice(NUM_FRAMES, size=int(rng.integers(0, 2)), replace=False).tolist())
                segs = [
                    None if t in absent else encode(ellipse(cx + dx * t, cy + dy * t, a, b)) for t in range(NUM_FRAMES)
                ]
                annotations.append(
                    {
                        "id": ann_id,
                        "video_id": video["id"],
                        "category_id": category,
                        "segmentations": segs,
                        "bboxes": [None if s is None else coco_mask.toBbox(s).tolist() for s in segs],
                        "areas": [None if s is None else float(coco_mask.area(s)) for s in segs],
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
    pairs = sorted({(a["video_id"], a["category_id"]) for a in annotations})
    np_pairs = [{"video_id": v, "category_id": c} for v, c in pairs]
    np_pairs += [{"video_id": 3, "category_id": 5}, {"video_id": 8, "category_id": 6}]
    categories = [{"id": i, "name": f"phrase {i}"} for i in range(1, 7)]
    return {"videos": videos, "annotations": annotations, "categories": categories, "video_np_pairs": np_pairs}


def gt_as_predictions(gt: dict, score: float = 0.9) -> list[dict]:
    """Every ground-truth masklet as a prediction with the given score."""
    keys = ("video_id", "category_id", "bboxes", "segmentations", "areas")
    return [{**{k: ann[k] for k in keys}, "score": score} for ann in gt["annotations"]]


# ------------------------------------------------------------------------------------- Meta's oracle
HEAVY_ORACLE_ENV = "SAM3_HEAVY_ORACLE_TESTS"  # "1" runs the full-size oracle comparisons (minutes, ~8 GB)


def oracle_python(probe_imports: str = "import sam3.model_builder") -> str:
    """The oracle interpreter with Meta's `sam3` (env SAM3_ORACLE_PYTHON, else SAM3_REFERENCE_VENV/bin/python,
    else /tmp/refvenv/bin/python), or skip when it is absent or cannot run `probe_imports`."""
    venv = os.environ.get("SAM3_REFERENCE_VENV", "/tmp/refvenv")
    python = os.environ.get("SAM3_ORACLE_PYTHON", str(Path(venv) / "bin" / "python"))
    if not Path(python).exists():
        pytest.skip(f"no oracle interpreter at {python} (set SAM3_ORACLE_PYTHON; ../shared/tools/ref_env.sh makes one)")
    probe = subprocess.run([python, "-I", "-c", probe_imports], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot run {probe_imports!r}: {probe.stderr.strip()[-300:]}")
    return python


def official_reference_script() -> Path:
    """`../shared/tools/official_reference.py`, or skip."""
    script = REPO_ROOT.parent / "shared" / "tools" / "official_reference.py"
    if not script.is_file():
        pytest.skip(f"no {script} (the shared reference script)")
    return script


def require_heavy_oracle() -> None:
    """Full-size comparisons with Meta's model take minutes and ~8 GB per process: opt-in."""
    if os.environ.get(HEAVY_ORACLE_ENV) != "1":
        pytest.skip(f"full-size oracle comparison (minutes, ~8 GB RAM, GBs of temp disk): set {HEAVY_ORACLE_ENV}=1")


# ------------------------------------------------------------------- a Roboflow-style COCO image export
ROBOFLOW_SPLITS = ("train", "valid", "test")
ROBOFLOW_CATEGORIES = [  # category 0 only names the supercategory, as Roboflow writes it
    {"id": 0, "name": "hardware", "supercategory": "none"},
    {"id": 1, "name": "bolt", "supercategory": "hardware"},
    {"id": 2, "name": "nut", "supercategory": "hardware"},
]


def write_roboflow_export(root: Path, num_images: int = 3, size: int = 64, seed: int = 0) -> dict[int, np.ndarray]:
    """Writes `root/{train,valid,test}/` with JPEG images and `_annotations.coco.json` beside them.

    Every image has a blue "bolt" rectangle (a polygon); odd images also a red "nut" disc (an RLE), so
    even images are negatives for "nut". Returns each annotation id's (size, size) bool mask.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    masks: dict[int, np.ndarray] = {}
    ann_id = 1
    yy, xx = np.mgrid[:size, :size]
    for split in ROBOFLOW_SPLITS:
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(num_images):
            pixels = np.full((size, size, 3), 128, dtype=np.uint8)
            x0, y0 = (int(v) for v in rng.integers(2, size // 2 - 4, size=2))
            w, h = (int(v) for v in rng.integers(8, size // 2, size=2))
            bolt = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            polygon = [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]
            shapes = [(1, bolt, [polygon], (40, 80, 235))]
            if i % 2:
                cx, cy, r = size * 3 // 4, size * 3 // 4, size // 8
                nut = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                shapes.append((2, nut & ~bolt, encode(nut & ~bolt), (225, 30, 30)))
            for category_id, mask, segmentation, color in shapes:
                pixels[mask] = color
                ys, xs = np.nonzero(mask)
                box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": i,
                        "category_id": category_id,
                        "bbox": box,
                        "area": int(mask.sum()),
                        "segmentation": segmentation,
                        "iscrowd": 0,
                    }
                )
                masks[ann_id] = mask
                ann_id += 1
            name = f"img{i}_jpg.rf.{split}{i}.jpg"
            Image.fromarray(pixels).save(folder / name, quality=95)
            images.append({"id": i, "file_name": name, "height": size, "width": size})
        data = {"info": {"description": "roboflow-style"}, "categories": ROBOFLOW_CATEGORIES, "images": images}
        data["annotations"] = annotations
        (folder / "_annotations.coco.json").write_text(json.dumps(data))
    return masks


@contextlib.contextmanager
def killed_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> Iterator[None]:
    """The training run inside the block dies during its `step`-th step (1-based, counted from the
    process start), as a SIGKILL would leave it: no checkpoint of that step. Expects the interruption."""
    real_step = trainer_module.forward_backward
    calls = 0

    def crash(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == step:
            raise KeyboardInterrupt(f"simulated kill during step {step}")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "forward_backward", crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(trainer_module, "forward_backward", real_step)
