"""Small synthetic SA-Co/VEval ground truth shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

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
                segs = [None if t in absent else encode(ellipse(cx + dx * t, cy + dy * t, a, b)) for t in range(NUM_FRAMES)]
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


@pytest.fixture
def veval_gt() -> dict:
    return make_veval_gt(0)
