"""Video AP: COCO average precision over masklets, with spatio-temporal IoU (YT-VIS style).

`pycocotools.cocoeval.COCOeval` does the matching and accumulation; each "image" is a video (class
mAP, categories kept apart) or a (video, phrase) pair (phrase AP: every pair is its own image and the
category is ignored). Only the IoU is replaced: the precomputed spatio-temporal IoU of the masklets.
As in the official evaluator, predictions are ranked by score, at most 100 per image are kept, and
ground-truth crowd masklets are ignored.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3.eval.saco_format import Masklet

__all__ = ["PairIoU", "video_ap"]

# (prediction masklet, ground-truth masklet) -> IoU; both belong to the same (video, category).
PairIoU = Callable[[Masklet, Masklet], float]

_MAX_DETS = 100
_ALL_AREAS = [0.0, 1e5**2]


def video_ap(
    gts: Sequence[Masklet],
    preds: Sequence[Masklet],
    pair_iou: PairIoU,
    use_categories: bool,
) -> tuple[float, float, float]:
    """COCO AP averaged over IoU 0.5:0.95, AP at 0.5 and AP at 0.75.

    Args:
        gts: ground-truth masklets; their videos are the images (with `use_categories` False each
            (video, category) pair must already have its own `video_id`, see `phrase_pairs`).
        preds: predicted masklets over the same videos.
        pair_iou: spatio-temporal IoU of a prediction and a ground truth of the same video and category.
        use_categories: True for class mAP (AP per category, then averaged), False for phrase AP.

    Returns:
        (AP@[.5:.95], AP@.5, AP@.75); 0 for categories with ground truth but no prediction. Categories
        without ground truth do not count (COCO's -1).
    """
    if not gts:
        return 0.0, 0.0, 0.0
    video_ids = sorted({m.video_id for m in gts} | {m.video_id for m in preds})
    category_ids = sorted({m.category_id for m in gts})
    coco_gt = _coco(video_ids, category_ids, [_record(m, i + 1, use_categories) for i, m in enumerate(gts)])
    coco_dt = _coco(video_ids, category_ids, [_record(m, i + 1, use_categories) for i, m in enumerate(preds)])
    gt_by_id = {i + 1: m for i, m in enumerate(gts)}
    dt_by_id = {i + 1: m for i, m in enumerate(preds)}

    evaluator = _MaskletCOCOeval(coco_gt, coco_dt, gt_by_id, dt_by_id, pair_iou)
    params = evaluator.params
    params.imgIds = video_ids
    params.catIds = category_ids if use_categories else [-1]
    params.useCats = int(use_categories)
    params.areaRng = [_ALL_AREAS]
    params.areaRngLbl = ["all"]
    params.maxDets = [_MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (iou thresholds, recall points, categories)
    return (
        _mean_valid(precision),
        _mean_valid(precision[np.isclose(params.iouThrs, 0.5)]),
        _mean_valid(precision[np.isclose(params.iouThrs, 0.75)]),
    )


class _MaskletCOCOeval(COCOeval):
    """COCOeval whose IoU comes from a spatio-temporal masklet IoU instead of per-image boxes or masks.

    Constructed with iouType "bbox" so that COCOeval does not try to rasterise segmentations; the IoU
    kind is decided by `pair_iou`.
    """

    def __init__(
        self,
        coco_gt: COCO,
        coco_dt: COCO,
        gt_by_id: dict[int, Masklet],
        dt_by_id: dict[int, Masklet],
        pair_iou: PairIoU,
    ) -> None:
        super().__init__(coco_gt, coco_dt, iouType="bbox")
        self._gt_by_id = gt_by_id
        self._dt_by_id = dt_by_id
        self._pair_iou = pair_iou

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # noqa: N802 (COCOeval's name)
        params = self.params
        if params.useCats:
            gts = self._gts[imgId, catId]
            dts = self._dts[imgId, catId]
        else:
            gts = [g for c in params.catIds for g in self._gts[imgId, c]]
            dts = [d for c in params.catIds for d in self._dts[imgId, c]]
        if not gts or not dts:
            return []
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: params.maxDets[-1]]
        ious = np.zeros((len(dts), len(gts)), dtype=np.float64)
        for i, d in enumerate(dts):
            for j, g in enumerate(gts):
                ious[i, j] = self._pair_iou(self._dt_by_id[d["id"]], self._gt_by_id[g["id"]])
        return ious


def _record(masklet: Masklet, ann_id: int, use_categories: bool) -> dict:
    areas = [a if a is not None else 0 for a in masklet.areas]
    return {
        "id": ann_id,
        "image_id": masklet.video_id,
        "category_id": masklet.category_id if use_categories else -1,
        "score": masklet.score,
        "area": float(np.mean(areas)) if areas else 0.0,
        "iscrowd": int(masklet.is_crowd),
    }


def _coco(video_ids: list[int], category_ids: list[int], records: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": [{"id": v} for v in video_ids],
        "categories": [{"id": c} for c in category_ids] + [{"id": -1}],
        "annotations": records,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0
