"""SA-Co/VEval metrics of a masklet prediction file, with the key names of SAM3's evaluator.

`python -m sam3.eval.veval --gt GT.json --pred PRED.json [--out RES.json]` writes
`{"dataset_results": {...}, "video_np_results": [...]}`:

- class mAP with spatio-temporal IoU: `video_{bbox,mask}_mAP_50_95` (`video_ap`, pycocotools);
- phrase AP, every (video, phrase) pair its own video: `video_{bbox,mask}_phrase_ap_{50_95,50,75}`;
- mask TETA: `video_mask_{teta,loc_a,assoc_a,cls_a,loc_re,loc_pr,assoc_re,assoc_pr,cls_re,cls_pr}` (`teta`);
- phrase HOTA: `video_{bbox,mask}_all_phrase_{HOTA,DetA,...,OWTA}` (`hota`, TrackEval);
- cgF1 at score 0.5, negatives from `video_np_pairs`:
  `video_{bbox,mask}_demo_{cgf1_micro,ilmcc,positive_micro_f1}_{50_95,50,75}`, plus the extra
  `..._demo_{precision,recall,f1,pmf1,cgf1}_*` and `..._{pmf1,cgf1}_w0dt_50_95` keys (`cgf1`).
Per (video, phrase) pair, `video_np_results` holds its HOTA fields and its TP/FP/FN/F1 counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam3.eval.cgf1 import PairCounts, match_pair, summarize_cgf1
from sam3.eval.hota import phrase_hota
from sam3.eval.saco_format import Masklet, VEvalGroundTruth, load_ground_truth, load_predictions
from sam3.eval.teta import TETA_KEYS, teta
from sam3.eval.track_iou import masklet_box_iou, masklet_mask_iou
from sam3.eval.video_ap import video_ap

__all__ = ["MaskletIoUTable", "evaluate_veval", "evaluate_veval_files", "main"]

logger = logging.getLogger(__name__)

Pair = tuple[int, int]  # (video_id, category_id)
_KINDS = (("bbox", False), ("mask", True))


class MaskletIoUTable:
    """Spatio-temporal IoU of every (prediction, ground truth) of the same video and category.

    Computed once and shared by class mAP, phrase AP and cgF1, which all compare only masklets of one
    (video, category) pair.
    """

    def __init__(self, gts: Sequence[Masklet], preds: Sequence[Masklet]) -> None:
        gts_by_pair = _group(gts)
        preds_by_pair = _group(preds)
        self._box: dict[tuple[int, int], float] = {}
        self._mask: dict[tuple[int, int], float] = {}
        for pair, group_gts in gts_by_pair.items():
            group_preds = preds_by_pair.get(pair, [])
            if not group_preds:
                continue
            box = masklet_box_iou(group_preds, group_gts)
            mask = masklet_mask_iou(group_preds, group_gts)
            for i, p in enumerate(group_preds):
                for j, g in enumerate(group_gts):
                    self._box[p.masklet_id, g.masklet_id] = float(box[i, j])
                    self._mask[p.masklet_id, g.masklet_id] = float(mask[i, j])

    def iou(self, pred: Masklet, gt: Masklet, use_masks: bool) -> float:
        return (self._mask if use_masks else self._box)[pred.masklet_id, gt.masklet_id]

    def matrix(self, preds: Sequence[Masklet], gts: Sequence[Masklet], use_masks: bool) -> np.ndarray:
        """(D, G) IoU of predictions and ground truths of one (video, category) pair."""
        table = self._mask if use_masks else self._box
        out = np.zeros((len(preds), len(gts)))
        for i, p in enumerate(preds):
            for j, g in enumerate(gts):
                out[i, j] = table[p.masklet_id, g.masklet_id]
        return out


def evaluate_veval(
    gt: VEvalGroundTruth,
    preds: Sequence[Masklet],
    score_thresh: float = 0.5,
    with_demo_extras: bool = True,
) -> dict[str, Any]:
    """All SA-Co/VEval metrics: `{"dataset_results": {...}, "video_np_results": [...]}`.

    Args:
        gt: the ground truth.
        preds: predicted masklets (their order only breaks exact score ties, as in COCO).
        score_thresh: the operating point of cgF1, HOTA and TETA.
        with_demo_extras: also write the `demo` precision/recall/F1/macro keys of SAM3's first release.
    """
    table = MaskletIoUTable(gt.masklets, preds)
    results: dict[str, float] = {}
    per_pair: dict[Pair, dict[str, float]] = defaultdict(dict)

    for kind, use_masks in _KINDS:
        ap = video_ap(gt.masklets, preds, lambda p, g, m=use_masks: table.iou(p, g, m), use_categories=True)
        results[f"video_{kind}_mAP_50_95"] = ap[0]

    pair_ids = _pair_video_ids(gt.masklets, preds)
    phrase_gts = [_as_pair_video(m, pair_ids) for m in gt.masklets]
    phrase_preds = [_as_pair_video(m, pair_ids) for m in preds]
    for kind, use_masks in _KINDS:
        ap = video_ap(phrase_gts, phrase_preds, lambda p, g, m=use_masks: table.iou(p, g, m), use_categories=False)
        for suffix, value in zip(("50_95", "50", "75"), ap, strict=True):
            results[f"video_{kind}_phrase_ap_{suffix}"] = value

    teta_values = teta(gt, preds, score_thresh=score_thresh)
    for name, key in TETA_KEYS.items():
        results[f"video_mask_{key}"] = teta_values[name]

    _add_hota(gt, preds, score_thresh, results, per_pair)
    _add_cgf1(gt, preds, table, score_thresh, with_demo_extras, results, per_pair)

    video_np_results = [{"video_id": v, "category_id": c, **values} for (v, c), values in per_pair.items()]
    return {"dataset_results": results, "video_np_results": video_np_results}


def evaluate_veval_files(gt_path: str | Path, pred_path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`evaluate_veval` on a ground-truth file and a prediction file."""
    gt = load_ground_truth(gt_path)
    preds = load_predictions(pred_path, gt)
    return evaluate_veval(gt, preds, **kwargs)


def _add_hota(
    gt: VEvalGroundTruth,
    preds: Sequence[Masklet],
    score_thresh: float,
    results: dict[str, float],
    per_pair: dict[Pair, dict[str, float]],
) -> None:
    """Phrase HOTA over the (video, phrase) pairs with ground truth or predictions above the threshold."""
    gts_by_pair = _group(gt.masklets)
    kept_by_pair = _group([p for p in preds if p.score > score_thresh])
    pairs = sorted(set(gts_by_pair) | set(kept_by_pair))
    sequences = [(gt.video(v).num_frames, gts_by_pair.get((v, c), []), kept_by_pair.get((v, c), [])) for v, c in pairs]
    for kind, use_masks in _KINDS:
        combined, per_sequence = phrase_hota(sequences, use_masks=use_masks, score_thresh=score_thresh)
        for name, value in combined.summary().items():
            results[f"video_{kind}_all_phrase_{name}"] = value
        for pair, seq in zip(pairs, per_sequence, strict=True):
            per_pair[pair].update({f"{kind}_{name}": value for name, value in seq.summary().items()})


def _add_cgf1(
    gt: VEvalGroundTruth,
    preds: Sequence[Masklet],
    table: MaskletIoUTable,
    score_thresh: float,
    with_demo_extras: bool,
    results: dict[str, float],
    per_pair: dict[Pair, dict[str, float]],
) -> None:
    """cgF1 over every pair with ground truth or predictions, plus the negative pairs of the ground truth."""
    gts_by_pair = _group([m for m in gt.masklets if not m.is_crowd])
    kept_by_pair = _group([p for p in preds if p.score >= score_thresh])
    pairs = list(_pair_video_ids(gt.masklets, preds))
    if gt.np_pairs is not None:
        listed = set(pairs)
        pairs += [p for p in dict.fromkeys(gt.np_pairs) if p not in listed]
    else:
        logger.warning("the ground truth has no video_np_pairs: IL_MCC and cgF1 are not computed")
    for kind, use_masks in _KINDS:
        counts: list[PairCounts] = []
        for pair in pairs:
            pair_gts, pair_preds = gts_by_pair.get(pair, []), kept_by_pair.get(pair, [])
            pair_counts = match_pair(table.matrix(pair_preds, pair_gts, use_masks))
            counts.append(pair_counts)
            per_pair[pair].update(_pair_counts_dict(kind, pair_counts))
        if gt.np_pairs is not None:
            results.update(summarize_cgf1(counts).as_dict(f"video_{kind}_demo", with_demo_extras))


def _pair_counts_dict(kind: str, counts: PairCounts) -> dict[str, float]:
    zeros = np.zeros(10, dtype=np.int64)
    tp = counts.tp if counts.tp is not None else zeros
    fp = counts.fp if counts.fp is not None else zeros
    fn = counts.fn if counts.fn is not None else zeros
    f1 = counts.f1()
    out = {}
    for suffix, index in (("50_95", slice(None)), ("50", 0), ("75", 5)):
        for name, values in (("TP", tp), ("FP", fp), ("FN", fn), ("F1", f1)):
            out[f"{kind}_{name}_{suffix}"] = float(np.mean(values[index]))
    return out


def _group(masklets: Sequence[Masklet]) -> dict[Pair, list[Masklet]]:
    groups: dict[Pair, list[Masklet]] = defaultdict(list)
    for m in masklets:
        groups[m.video_id, m.category_id].append(m)
    return groups


def _pair_video_ids(gts: Sequence[Masklet], preds: Sequence[Masklet]) -> dict[Pair, int]:
    """Every (video, category) pair with ground truth or predictions, sorted, numbered from 1."""
    pairs = sorted({(m.video_id, m.category_id) for m in gts} | {(m.video_id, m.category_id) for m in preds})
    return {pair: i + 1 for i, pair in enumerate(pairs)}


def _as_pair_video(masklet: Masklet, pair_ids: dict[Pair, int]) -> Masklet:
    return dataclasses.replace(masklet, video_id=pair_ids[masklet.video_id, masklet.category_id])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gt", required=True, help="SA-Co/VEval ground-truth JSON")
    parser.add_argument("--pred", required=True, help="prediction JSON (list of masklets)")
    parser.add_argument("--out", help="where to write the results JSON (default: print only)")
    parser.add_argument("--no-demo-extras", action="store_true", help="omit the extra demo precision/recall/macro keys")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    res = evaluate_veval_files(args.gt, args.pred, with_demo_extras=not args.no_demo_extras)
    logger.info("evaluated %s in %.1f s", args.pred, time.perf_counter() - start)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f)
    print(json.dumps(res["dataset_results"], indent=1))


if __name__ == "__main__":
    main()
