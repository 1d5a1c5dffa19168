"""Image metrics of one-frame datasets: COCO AP through pycocotools and image cgF1."""

from __future__ import annotations

import pytest

from sam3.eval.coco import coco_ap, image_cgf1
from tests.helpers import ellipse, encode


def _gt() -> dict:
    """Image 1: two instances of category 1; image 2: two of category 2; image 3: none."""
    images = [{"id": i, "height": 32, "width": 48} for i in (1, 2, 3)]
    instances = [(1, 1, (12, 10, 6, 5)), (1, 1, (30, 20, 7, 6)), (2, 2, (20, 14, 8, 5)), (2, 2, (36, 8, 4, 4))]
    annotations = []
    for ann_id, (image_id, category_id, ellipse_params) in enumerate(instances, start=1):
        mask = ellipse(*ellipse_params)
        ys, xs = mask.nonzero()
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": bbox,
                "segmentation": encode(mask),
                "area": float(mask.sum()),
                "iscrowd": 0,
            }
        )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}


def _perfect(gt: dict) -> list[dict]:
    keys = ("image_id", "category_id", "bbox", "segmentation")
    return [{**{k: a[k] for k in keys}, "score": 0.9} for a in gt["annotations"]]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_ap_perfect_and_empty(iou_type):
    gt = _gt()
    assert coco_ap(gt, _perfect(gt), iou_type)["AP"] == pytest.approx(1.0)
    assert coco_ap(gt, [], iou_type)["AP"] == 0.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_image_cgf1(iou_type):
    gt = _gt()
    negatives = [(3, 1), (3, 2)]
    perfect = image_cgf1(gt, _perfect(gt), iou_type, negative_pairs=negatives)
    assert perfect.cgf1_micro.mean() == pytest.approx(1.0, abs=1e-3)
    # a false positive on a negative pair and a missed instance on a positive one
    preds = _perfect(gt)[1:] + [{**_perfect(gt)[0], "image_id": 3}]
    worse = image_cgf1(gt, preds, iou_type, negative_pairs=negatives)
    # pairs: (1,1) 1 TP + 1 FN, (2,2) 2 TP, (3,1) FP, (3,2) TN -> IL: TP 2, FP 1, TN 1, FN 0
    assert worse.il_mcc == pytest.approx((2 * 1 - 0) / (3 * 2 * 2 * 1) ** 0.5, abs=1e-5)
    p, r = 3 / 3, 3 / 4  # positive pairs only: TP 3, FP 0, FN 1
    assert worse.positive_micro_f1[0] == pytest.approx(2 * p * r / (p + r), abs=1e-3)
    assert worse.cgf1_micro[0] == pytest.approx(worse.positive_micro_f1[0] * worse.il_mcc)
