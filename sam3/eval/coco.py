"""Per-frame image metrics for one-frame datasets: COCO box/mask AP (pycocotools) and image cgF1.

Ground truth is a COCO dict (`images`, `annotations` with absolute xywh `bbox`, RLE or polygon
`segmentation`, `iscrowd`, `categories`); predictions are COCO results (`image_id`, `category_id`,
`score`, `bbox`, and for masks `segmentation` as RLE). Image cgF1 counts every (image, category) pair
with ground truth or predictions, plus the negative pairs the caller lists (prompts asked about an
image that has no instance of them); see `sam3.eval.cgf1` for the definitions.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3.eval.cgf1 import CGF1Summary, match_pair, summarize_cgf1

__all__ = ["COCO_STAT_NAMES", "coco_ap", "image_cgf1"]

IoUType = Literal["bbox", "segm"]

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_ap(gt: dict[str, Any], preds: list[dict[str, Any]], iou_type: IoUType) -> dict[str, float]:
    """The 12 COCO summary numbers (`COCO_STAT_NAMES`) of `preds` against `gt`, per category then averaged."""
    coco_gt = _coco(copy.deepcopy(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        if preds:
            coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        else:
            coco_dt = _coco({"images": gt["images"], "categories": gt["categories"], "annotations": []})
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}


def image_cgf1(
    gt: dict[str, Any],
    preds: list[dict[str, Any]],
    iou_type: IoUType,
    negative_pairs: Iterable[tuple[int, int]] = (),
    score_thresh: float = 0.5,
) -> CGF1Summary:
    """Image cgF1 over (image, category) pairs (IoU of boxes or masks; crowd ground truths ignored).

    Args:
        gt: COCO ground truth.
        preds: COCO results.
        iou_type: "bbox" or "segm".
        negative_pairs: (image_id, category_id) pairs asked about but without instances.
        score_thresh: predictions with score >= this count.
    """
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    gts: dict[tuple[int, int], list] = defaultdict(list)
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            gts[ann["image_id"], ann["category_id"]].append(_region(ann, iou_type, sizes[ann["image_id"]]))
    dts: dict[tuple[int, int], list] = defaultdict(list)
    for pred in preds:
        if pred["score"] >= score_thresh:
            dts[pred["image_id"], pred["category_id"]].append(_region(pred, iou_type, sizes[pred["image_id"]]))
    pairs = set(gts) | set(dts) | set(negative_pairs)
    counts = []
    for pair in sorted(pairs):
        d, g = dts.get(pair, []), gts.get(pair, [])
        if d and g:
            ious = np.asarray(coco_mask.iou(d, g, [0] * len(g)), dtype=np.float64).reshape(len(d), len(g))
        else:
            ious = np.zeros((len(d), len(g)))
        counts.append(match_pair(ious))
    return summarize_cgf1(counts)


def _region(ann: dict[str, Any], iou_type: IoUType, size: tuple[int, int]) -> Any:
    """The box (xywh list) or compressed RLE of an annotation or result, as pycocotools' iou takes it."""
    if iou_type == "bbox":
        return list(ann["bbox"])
    segm = ann["segmentation"]
    height, width = size
    if isinstance(segm, list):  # polygons
        return coco_mask.merge(coco_mask.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return coco_mask.frPyObjects(segm, height, width)
    counts = segm["counts"]
    return {"size": segm["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
