"""TETA (Li et al., "Tracking Every Thing in the Wild", ECCV 2022) for masklets, exhaustive setting.

No maintained package provides TETA, so it is written here, following the TETA toolkit that SAM3
ships (the values equal its output on SA-Co/VEval). Outline, per video:

1. Predictions with score >= 0.5 are kept; a prediction frame counts where its box is present and not
   all zeros; a ground-truth frame counts where its box is present. Similarity is per-frame mask IoU.
2. Class-agnostic pass: predictions overlapping any ground truth (IoU >= 0.5) in some frame take part
   in localisation and association; a global assignment at IoU 0.5 (HOTA-style alignment score, then
   Hungarian per frame) links ground truths to predictions of any class.
3. Per class with ground truth somewhere in the dataset (TAO "class-agnostic localisation"): ground
   truths of the class, predictions that overlap them (minus those assigned to ground truths of other
   classes). Localisation TP/FN/FP and association (AssocA/Re/Pr) over 20 thresholds 0:0.05:0.95;
   classification TP/FN over thresholds >= 0.5, and classification FP from predictions of the class
   that match nothing and from matches of other classes' ground truths predicted as this class.
4. Sequences are combined per class (counts summed, association weighted by localisation TPs),
   classes averaged over those with any localisation count, each metric averaged over thresholds,
   reported as percentages with five significant digits (the toolkit's summary format).
Quirks of the toolkit are kept for equal values and marked `toolkit:` below.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from sam3.eval.saco_format import Masklet, VEvalGroundTruth
from sam3.eval.track_iou import frame_mask_iou

__all__ = ["TETA_KEYS", "teta"]

# Output name of each TETA field, in the order of the toolkit's summary row.
TETA_KEYS = {
    "TETA": "teta",
    "LocA": "loc_a",
    "AssocA": "assoc_a",
    "ClsA": "cls_a",
    "LocRe": "loc_re",
    "LocPr": "loc_pr",
    "AssocRe": "assoc_re",
    "AssocPr": "assoc_pr",
    "ClsRe": "cls_re",
    "ClsPr": "cls_pr",
}

_EPS = np.finfo(float).eps
_ALPHAS = np.arange(0.0, 0.99, 0.05)  # 20 localisation thresholds
_NUM_CLS_ALPHAS = len(np.arange(0.5, 0.99, 0.05))  # 10 classification thresholds (alphas >= 0.5)
_OVERLAP_THRESH = 0.5


def teta(gt: VEvalGroundTruth, preds: Sequence[Masklet], score_thresh: float = 0.5) -> dict[str, float]:
    """Mask TETA of predicted masklets against the ground truth, as `{TETA: 50.647, LocA: ..., ...}` (percent)."""
    seen = {m.category_id for m in gt.masklets}
    class_ids = [c for c in gt.category_ids if c in seen]
    kept = [p for p in preds if p.score >= score_thresh]
    gts_by_video: dict[int, list[Masklet]] = defaultdict(list)
    preds_by_video: dict[int, list[Masklet]] = defaultdict(list)
    for m in gt.masklets:
        gts_by_video[m.video_id].append(m)
    for p in kept:
        preds_by_video[p.video_id].append(p)
    per_class: dict[int, list[_Counts]] = {c: [] for c in class_ids}
    for video in gt.videos:
        video_gts, video_preds = gts_by_video[video.video_id], preds_by_video[video.video_id]
        for cls, counts in _eval_video(video.num_frames, video_gts, video_preds, class_ids).items():
            per_class[cls].append(counts)
    class_results = [_combine_sequences(results) for results in per_class.values() if results]
    class_results = [r for r in class_results if (r.loc_tp + r.loc_fn + r.loc_fp > _EPS).any()]
    if not class_results:
        return dict.fromkeys(TETA_KEYS, 0.0)
    averaged = {name: np.mean([np.mean(r.final()[name]) for r in class_results]) for name in TETA_KEYS}
    # toolkit: the class average is taken per threshold, then over thresholds; equal to this order.
    return {name: float(f"{100 * value:1.5g}") for name, value in averaged.items()}


@dataclass
class _Frame:
    """Detections of one frame: ids (masklet indices), classes and RLEs."""

    ids: np.ndarray
    classes: np.ndarray
    rles: list


@dataclass
class _Counts:
    """TETA counts of one class in one video (arrays over the 20 or 10 thresholds)."""

    loc_tp: np.ndarray = field(default_factory=lambda: np.zeros(len(_ALPHAS)))
    loc_fn: np.ndarray = field(default_factory=lambda: np.zeros(len(_ALPHAS)))
    loc_fp: np.ndarray = field(default_factory=lambda: np.zeros(len(_ALPHAS)))
    cls_tp: np.ndarray = field(default_factory=lambda: np.zeros(_NUM_CLS_ALPHAS))
    cls_fn: np.ndarray = field(default_factory=lambda: np.zeros(_NUM_CLS_ALPHAS))
    cls_fp: np.ndarray = field(default_factory=lambda: np.zeros(_NUM_CLS_ALPHAS))
    assoc_a: np.ndarray = field(default_factory=lambda: np.zeros(len(_ALPHAS)))
    assoc_re: np.ndarray = field(default_factory=lambda: np.zeros(len(_ALPHAS)))
    assoc_pr: np.ndarray = field(default_factory=lambda: np.zeros(len(_ALPHAS)))

    def final(self) -> dict[str, np.ndarray | float]:
        loc_a = self.loc_tp / np.maximum(1, self.loc_tp + self.loc_fn + self.loc_fp)
        cls_a = float(np.mean(self.cls_tp / np.maximum(1, self.cls_tp + self.cls_fn + self.cls_fp)))
        return {
            "TETA": (loc_a + self.assoc_a + cls_a) / 3,
            "LocA": loc_a,
            "AssocA": self.assoc_a,
            "ClsA": cls_a,
            "LocRe": self.loc_tp / np.maximum(1, self.loc_tp + self.loc_fn),
            "LocPr": self.loc_tp / np.maximum(1, self.loc_tp + self.loc_fp),
            "AssocRe": self.assoc_re,
            "AssocPr": self.assoc_pr,
            "ClsRe": float(np.mean(self.cls_tp / np.maximum(1, self.cls_tp + self.cls_fn))),
            "ClsPr": float(np.mean(self.cls_tp / np.maximum(1, self.cls_tp + self.cls_fp))),
        }


@dataclass
class _Prepared:
    """Per-frame data after selecting ground truths of one class (or all) and candidate predictions.

    gt_ids / pred_ids are contiguous (relabelled); `*_orig` keep the masklet indices.
    """

    gt_ids: list[np.ndarray]
    pred_ids: list[np.ndarray]
    gt_orig: list[np.ndarray]
    pred_orig: list[np.ndarray]
    pred_classes: list[np.ndarray]
    overlap_orig: list[set[int]]  # predictions that overlap the selected ground truths (IoU >= 0.5)
    cls_eval_counts: list[int]  # predictions judged for classification (overlap or of this class)
    sim: list[np.ndarray]
    num_gt_ids: int
    num_pred_ids: int

    @property
    def num_gt_dets(self) -> int:
        return sum(len(x) for x in self.gt_ids)

    @property
    def num_overlap_dets(self) -> int:
        return sum(len(x) for x in self.overlap_orig)


def _eval_video(num_frames: int, gts: Sequence[Masklet], preds: Sequence[Masklet], class_ids: list[int]) -> dict:
    """TETA counts of every class that has ground truth or predictions in this video."""
    gt_frames = [_frame(gts, t, is_gt=True) for t in range(num_frames)]
    pred_frames = [_frame(preds, t, is_gt=False) for t in range(num_frames)]
    sims = [frame_mask_iou(g.rles, p.rles) for g, p in zip(gt_frames, pred_frames, strict=True)]
    assignment = _global_assignment(_prepare(gt_frames, pred_frames, sims, cls=None, assignment=None))

    class_set = set(class_ids)
    present = {m.category_id for m in gts} | {m.category_id for m in preds}
    cls_fp = {c: np.zeros(_NUM_CLS_ALPHAS) for c in class_ids}
    results = {}
    for cls in class_ids:
        if cls not in present:
            continue  # no ground truth and no prediction of this class here: all counts stay zero
        data = _prepare(gt_frames, pred_frames, sims, cls=cls, assignment=assignment)
        results[cls] = _eval_class(data, cls, class_set, cls_fp)
    for cls, counts in results.items():
        counts.cls_fp = counts.cls_fp + cls_fp[cls]
    return results


def _frame(masklets: Sequence[Masklet], t: int, is_gt: bool) -> _Frame:
    ids, classes, rles = [], [], []
    for i, m in enumerate(masklets):
        box = m.boxes_xywh[t]
        if box is None or (not is_gt and all(x == 0 for x in box)):
            continue
        ids.append(i)
        classes.append(m.category_id)
        rles.append(m.segmentations[t])
    return _Frame(np.array(ids, dtype=int), np.array(classes, dtype=int), rles)


def _prepare(
    gt_frames: list[_Frame],
    pred_frames: list[_Frame],
    sims: list[np.ndarray],
    cls: int | None,
    assignment: list[dict] | None,
) -> _Prepared:
    """Selects the ground truths of `cls` (all when None) and the predictions that may match them."""
    num_frames = len(gt_frames)
    gt_masks, overlap_orig, exh_orig = [], [], []
    for t in range(num_frames):
        gt_mask = np.ones(len(gt_frames[t].ids), bool) if cls is None else gt_frames[t].classes == cls
        gt_masks.append(gt_mask)
        overlapping = pred_frames[t].ids[(sims[t][gt_mask] >= _OVERLAP_THRESH).any(axis=0)]
        if assignment is not None:
            # predictions assigned to ground truths of other classes are not this class's candidates
            gt_in = set(gt_frames[t].ids[gt_mask].tolist())
            taken = {p for g, p in assignment[t].items() if g not in gt_in}
            overlapping = np.array(sorted(set(overlapping.tolist()) - taken), dtype=int)
        overlap_orig.append(np.unique(overlapping))
        exh_orig.append(pred_frames[t].ids[pred_frames[t].classes == cls] if cls is not None else np.zeros(0, int))
    candidates = set(np.concatenate(overlap_orig).tolist()) if overlap_orig else set()

    gt_orig, pred_orig, pred_classes, sim, cls_eval_counts = [], [], [], [], []
    for t in range(num_frames):
        pred_mask = np.isin(pred_frames[t].ids, list(candidates))
        gt_orig.append(gt_frames[t].ids[gt_masks[t]])
        pred_orig.append(pred_frames[t].ids[pred_mask])
        pred_classes.append(pred_frames[t].classes[pred_mask])
        sim.append(sims[t][gt_masks[t]][:, pred_mask])
        cls_eval_counts.append(len(set(overlap_orig[t].tolist()) | set(exh_orig[t].tolist())))
    gt_map = _contiguous(gt_orig)
    pred_map = _contiguous(pred_orig)
    return _Prepared(
        gt_ids=[np.array([gt_map[i] for i in ids], dtype=int) for ids in gt_orig],
        pred_ids=[np.array([pred_map[i] for i in ids], dtype=int) for ids in pred_orig],
        gt_orig=gt_orig,
        pred_orig=pred_orig,
        pred_classes=pred_classes,
        overlap_orig=[set(ids.tolist()) for ids in overlap_orig],
        cls_eval_counts=cls_eval_counts,
        sim=sim,
        num_gt_ids=len(gt_map),
        num_pred_ids=len(pred_map),
    )


def _global_assignment(data: _Prepared) -> list[dict]:
    """Per frame, {ground-truth masklet index: predicted masklet index} matched at IoU >= 0.5, any class."""
    num_frames = len(data.gt_ids)
    if data.num_overlap_dets == 0 or data.num_gt_dets == 0:
        return [{} for _ in range(num_frames)]
    alignment, _, _ = _alignment_score(data)
    assignment = []
    for t in range(num_frames):
        rows, cols = _matches(data, t, alignment, [0.5])[0]
        assignment.append(dict(zip(data.gt_orig[t][rows].tolist(), data.pred_orig[t][cols].tolist(), strict=True)))
    return assignment


def _eval_class(data: _Prepared, cls: int, class_set: set[int], cls_fp: dict[int, np.ndarray]) -> _Counts:
    """TETA counts of one class in one video; adds classification FPs to `cls_fp` (shared by the classes)."""
    counts = _Counts()
    num_cls_dets = sum(data.cls_eval_counts)
    if data.num_overlap_dets == 0 or data.num_gt_dets == 0:
        if data.num_overlap_dets == 0:
            counts.loc_fn = data.num_gt_dets * np.ones(len(_ALPHAS))
        # toolkit: this replaces (not adds to) FPs other classes may have attributed to `cls` so far
        cls_fp[cls] = num_cls_dets * np.ones(_NUM_CLS_ALPHAS)
        return counts
    alignment, gt_count, pred_count = _alignment_score(data)
    match_counts = [np.zeros_like(alignment) for _ in _ALPHAS]
    for t in range(len(data.gt_ids)):
        gt_ids, pred_ids = data.gt_ids[t], data.pred_ids[t]
        if len(gt_ids) == 0:
            cls_fp[cls] += data.cls_eval_counts[t]
            continue
        matches = _matches(data, t, alignment, list(_ALPHAS))
        overlap_orig = data.overlap_orig[t]
        cls_fp[cls] += data.cls_eval_counts[t] - len(overlap_orig)
        for a, alpha in enumerate(_ALPHAS):
            rows, cols = matches[a]
            num_matches = len(rows)
            matched_orig = set(data.pred_orig[t][cols].tolist())
            matched_classes = data.pred_classes[t][cols]
            if alpha >= 0.5:
                for wrong in matched_classes[matched_classes != cls]:
                    if int(wrong) in class_set:
                        cls_fp[int(wrong)][a - len(_ALPHAS) + _NUM_CLS_ALPHAS] += 1
                correct = int(np.sum(matched_classes == cls))
                counts.cls_tp[a - len(_ALPHAS) + _NUM_CLS_ALPHAS] += correct
                counts.cls_fn[a - len(_ALPHAS) + _NUM_CLS_ALPHAS] += num_matches - correct
            counts.loc_tp[a] += num_matches
            counts.loc_fn[a] += len(gt_ids) - num_matches
            counts.loc_fp[a] += len(overlap_orig - matched_orig)
            if num_matches:
                match_counts[a][gt_ids[rows], pred_ids[cols]] += 1
    for a in range(len(_ALPHAS)):
        matched = match_counts[a]
        denominator = np.maximum(1, counts.loc_tp[a])
        counts.assoc_a[a] = np.sum(matched * matched / np.maximum(1, gt_count + pred_count - matched)) / denominator
        counts.assoc_re[a] = np.sum(matched * matched / np.maximum(1, gt_count)) / denominator
        counts.assoc_pr[a] = np.sum(matched * matched / np.maximum(1, pred_count)) / denominator
    return counts


def _alignment_score(data: _Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HOTA's global alignment score between ground-truth and predicted ids, and their detection counts."""
    potential = np.zeros((data.num_gt_ids, data.num_pred_ids))
    gt_count = np.zeros((data.num_gt_ids, 1))
    pred_count = np.zeros((1, data.num_pred_ids))
    for gt_ids, pred_ids, sim in zip(data.gt_ids, data.pred_ids, data.sim, strict=True):
        denominator = sim.sum(0, keepdims=True) + sim.sum(1, keepdims=True) - sim
        sim_iou = np.zeros_like(sim)
        valid = denominator > _EPS
        sim_iou[valid] = sim[valid] / denominator[valid]
        potential[gt_ids[:, None], pred_ids[None, :]] += sim_iou
        gt_count[gt_ids] += 1
        pred_count[0, pred_ids] += 1
    return potential / (gt_count + pred_count - potential), gt_count, pred_count


def _matches(
    data: _Prepared, t: int, alignment: np.ndarray, alphas: list[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hungarian matches of frame t maximising alignment x IoU, kept per alpha where IoU >= alpha."""
    sim = data.sim[t]
    score = alignment[data.gt_ids[t][:, None], data.pred_ids[t][None, :]] * sim
    rows, cols = linear_sum_assignment(-score)
    out = []
    for alpha in alphas:
        keep = sim[rows, cols] >= alpha - _EPS
        out.append((rows[keep], cols[keep]))
    return out


def _combine_sequences(results: list[_Counts]) -> _Counts:
    combined = _Counts()
    for name in ("loc_tp", "loc_fn", "loc_fp", "cls_tp", "cls_fn", "cls_fp"):
        setattr(combined, name, sum(getattr(r, name) for r in results))
    weight = np.maximum(1.0, combined.loc_tp)
    for name in ("assoc_re", "assoc_pr", "assoc_a"):
        setattr(combined, name, sum(getattr(r, name) * r.loc_tp for r in results) / weight)
    return combined


def _contiguous(ids_per_frame: list[np.ndarray]) -> dict[int, int]:
    present = sorted(set(np.concatenate(ids_per_frame).tolist())) if ids_per_frame else []
    return {old: new for new, old in enumerate(present)}
