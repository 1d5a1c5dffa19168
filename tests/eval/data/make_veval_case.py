"""Generates the synthetic SA-Co/VEval case of this folder: `python make_veval_case.py 6 OUT_DIR`.

Four 8-frame videos of moving ellipses, phrases with 1-3 masklets (some frames absent, ~5 % crowd),
and predictions covering the hard cases: perturbed and dropped frames, wrong phrases, duplicates,
identity switches (first half one object, second half another), false positives, negative phrases.
`veval_case_res_sam3_0.1.4.json` is what SAM3's evaluator (`sam3==0.1.4`, in its own virtualenv)
writes for them: `python -m sam3.eval.saco_veval_eval one --gt_annot_file veval_case_gt.json
--pred_file veval_case_pred.json --eval_res_file veval_case_res_sam3_0.1.4.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

HEIGHT, WIDTH, NUM_FRAMES, NUM_VIDEOS = 40, 56, 8, 4
YY, XX = np.mgrid[:HEIGHT, :WIDTH]


def encode(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((XX - cx) / a) ** 2 + ((YY - cy) / b) ** 2 <= 1


def make_case(seed: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": f"thing {i}"} for i in range(1, 11)]
    videos = [
        {
            "id": v * 3 + 1,
            "video_name": f"vid{v}",
            "file_names": [f"vid{v}/{t:05d}.jpg" for t in range(NUM_FRAMES)],
            "height": HEIGHT,
            "width": WIDTH,
            "length": NUM_FRAMES,
        }
        for v in range(NUM_VIDEOS)
    ]
    annotations, gt_masks, ann_id = [], {}, 7
    for video in videos:
        for category in rng.choice(np.arange(1, 8), size=3, replace=False):
            for _ in range(rng.integers(1, 4)):
                cx, cy = rng.uniform(5, WIDTH - 5), rng.uniform(5, HEIGHT - 5)
                a, b = rng.uniform(3, 9), rng.uniform(3, 7)
                dx, dy = rng.uniform(-2, 2), rng.uniform(-1.5, 1.5)
                absent = set(rng.choice(NUM_FRAMES, size=rng.integers(0, 3), replace=False).tolist())
                masks = []
                for t in range(NUM_FRAMES):
                    mask = ellipse(cx + dx * t, cy + dy * t, a, b)
                    masks.append(None if (t in absent or not mask.any()) else mask)
                if all(m is None for m in masks):
                    continue
                segs = [None if m is None else encode(m) for m in masks]
                annotations.append(
                    {
                        "id": ann_id,
                        "video_id": video["id"],
                        "category_id": int(category),
                        "segmentations": segs,
                        "bboxes": [None if s is None else [float(x) for x in coco_mask.toBbox(s)] for s in segs],
                        "areas": [None if s is None else float(coco_mask.area(s)) for s in segs],
                        "iscrowd": int(rng.random() < 0.05),
                    }
                )
                gt_masks[ann_id] = (video["id"], int(category), masks)
                ann_id += 1
    pairs = sorted({(a["video_id"], a["category_id"]) for a in annotations})
    np_pairs = [{"video_id": v, "category_id": c} for v, c in pairs]
    np_pairs += [{"video_id": video["id"], "category_id": c} for video in videos for c in (8, 9)]

    preds: list[dict] = []

    def emit(video_id: int, category_id: int, masks: list, score: float) -> None:
        segs, boxes, areas = [], [], []
        for mask in masks:
            rle = encode(np.zeros((HEIGHT, WIDTH), bool) if mask is None else mask)
            segs.append(rle)
            boxes.append([int(x) for x in coco_mask.toBbox(rle)])
            areas.append(int(coco_mask.area(rle)))
        preds.append(
            {
                "video_id": video_id,
                "category_id": category_id,
                "bboxes": boxes,
                "score": float(score),
                "segmentations": segs,
                "areas": areas,
            }
        )

    def perturb(masks: list) -> list:
        out = []
        for mask in masks:
            u = rng.random()
            if mask is None or u < 0.1:
                out.append(None)
            elif u < 0.6:
                out.append(mask)
            else:
                out.append(np.roll(mask, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)))
        return out

    ids = list(gt_masks)
    for i in ids:
        video_id, category, masks = gt_masks[i]
        if rng.random() < 0.85:
            predicted = category if rng.random() < 0.85 else int(rng.integers(1, 11))
            emit(video_id, predicted, perturb(masks), rng.uniform(0.3, 0.99))
        if rng.random() < 0.2:
            emit(video_id, category, perturb(masks), rng.uniform(0.2, 0.7))
    for i in ids:  # identity switches between two objects of one phrase
        for j in ids:
            if i < j and gt_masks[i][:2] == gt_masks[j][:2] and rng.random() < 0.5:
                video_id, category, first = gt_masks[i]
                half = NUM_FRAMES // 2
                emit(video_id, category, perturb(first[:half] + gt_masks[j][2][half:]), rng.uniform(0.4, 0.9))
    for _ in range(5):  # false positives
        video_id = videos[int(rng.integers(0, NUM_VIDEOS))]["id"]
        cx, cy = rng.uniform(5, WIDTH - 5), rng.uniform(5, HEIGHT - 5)
        emit(
            video_id,
            int(rng.integers(1, 11)),
            [ellipse(cx + t, cy, 4, 3) for t in range(NUM_FRAMES)],
            rng.uniform(0.3, 0.9),
        )
    gt = {
        "info": {},
        "videos": videos,
        "annotations": annotations,
        "categories": categories,
        "video_np_pairs": np_pairs,
    }
    return gt, preds


if __name__ == "__main__":
    gt, preds = make_case(int(sys.argv[1]))
    out_dir = Path(sys.argv[2])
    (out_dir / "veval_case_gt.json").write_text(json.dumps(gt))
    (out_dir / "veval_case_pred.json").write_text(json.dumps(preds))
