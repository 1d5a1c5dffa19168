"""cgF1 (SAM3 paper): classification-gated F1 over (media, phrase) pairs, for images and videos.

Predictions are thresholded (score >= 0.5 by default) and treated as hard. For every (image or video,
phrase) pair, predictions are matched one-to-one to the non-crowd ground truths by Hungarian matching
on IoU (masklets: spatio-temporal IoU); a match is a true positive at IoU threshold t when its IoU >= t,
for t in 0.50:0.05:0.95. The definitions follow SAM3's evaluator:

- pair-level ("image-level", IL) confusion: TP = the pair has ground truth and predictions, FN = ground
  truth but no prediction, FP = predictions but no ground truth, TN = neither. Negative pairs (listed
  phrases without masklets) enter here only. IL_MCC is Matthews' correlation of these counts.
- positive_micro_F1: micro F1 of the instance TP/FP/FN summed over pairs that have ground truth.
- cgF1 = positive_micro_F1 * IL_MCC, per IoU threshold; `_50_95` keys average over thresholds.
- Extra "demo" keys of SAM3's first published results: micro precision / recall / F1 over all pairs,
  positive macro F1 (mean of the per-pair F1 over pairs with ground truth and predictions: `pmf1`;
  over all pairs with ground truth: `pmf1_w0dt`) and their products with IL_MCC (`cgf1`, `cgf1_w0dt`).
The small constants (1e-4 in instance ratios, 1e-6 in IL ratios) are SAM3's, kept for equal values.
Two deliberate differences, both where SAM3 divides by zero: `ilmcc_50` / `ilmcc_75` are IL_MCC itself
(SAM3 writes cgF1 / positive_micro_F1, the same number, or NaN when that F1 is 0), and a positive macro
F1 without any qualifying pair is 0 (SAM3: NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["IOU_THRESHOLDS", "PairCounts", "match_pair", "CGF1Summary", "summarize_cgf1"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass
class PairCounts:
    """Matching result of one (media, phrase) pair.

    Attributes:
        num_gt: non-crowd ground truths.
        num_pred: predictions above the score threshold.
        tp, fp, fn: (10,) int64 per IoU threshold; None when the pair has neither (a true negative).
    """

    num_gt: int
    num_pred: int
    tp: np.ndarray | None
    fp: np.ndarray | None
    fn: np.ndarray | None

    def f1(self) -> np.ndarray:
        """(10,) per-threshold F1 of the pair, 1 where TP + FP + FN = 0 (the per-pair output of SAM3)."""
        if self.tp is None:
            return np.ones(len(IOU_THRESHOLDS))
        denominator = 2 * self.tp + self.fp + self.fn
        return np.where(denominator > 0, 2 * self.tp / np.maximum(denominator, 1), 1.0)


def match_pair(ious: np.ndarray) -> PairCounts:
    """Hungarian-matches the D kept predictions to the G non-crowd ground truths of one pair.

    Args:
        ious: (D, G) IoU of predictions above the score threshold vs non-crowd ground truths.
    """
    num_pred, num_gt = ious.shape
    if num_pred == 0 and num_gt == 0:
        return PairCounts(0, 0, None, None, None)
    rows, cols = linear_sum_assignment(-ious)
    matched = ious[rows, cols]
    tp = np.array([(matched >= t).sum() for t in IOU_THRESHOLDS], dtype=np.int64)
    return PairCounts(num_gt, num_pred, tp, num_pred - tp, num_gt - tp)


@dataclass
class CGF1Summary:
    """Dataset-level cgF1 metrics; per-threshold entries are (10,) arrays over IOU_THRESHOLDS."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    positive_micro_f1: np.ndarray
    positive_macro_f1: np.ndarray
    positive_macro_f1_w0dt: np.ndarray
    il_mcc: float

    @property
    def cgf1_micro(self) -> np.ndarray:
        return self.positive_micro_f1 * self.il_mcc

    @property
    def cgf1_macro(self) -> np.ndarray:
        return self.positive_macro_f1 * self.il_mcc

    @property
    def cgf1_macro_w0dt(self) -> np.ndarray:
        return self.positive_macro_f1_w0dt * self.il_mcc

    def as_dict(self, prefix: str, with_demo_extras: bool = True) -> dict[str, float]:
        """Flat `{prefix}_{metric}_{50_95|50|75}` keys as written by the SAM3 evaluator."""
        at = {"50_95": slice(None), "50": 0, "75": 5}
        out: dict[str, float] = {}
        for suffix, index in at.items():
            out[f"{prefix}_cgf1_micro_{suffix}"] = _mean(self.cgf1_micro[index])
            out[f"{prefix}_ilmcc_{suffix}"] = float(self.il_mcc)
            out[f"{prefix}_positive_micro_f1_{suffix}"] = _mean(self.positive_micro_f1[index])
        if with_demo_extras:
            for suffix, index in at.items():
                out[f"{prefix}_precision_{suffix}"] = _mean(self.precision[index])
                out[f"{prefix}_recall_{suffix}"] = _mean(self.recall[index])
                out[f"{prefix}_f1_{suffix}"] = _mean(self.f1[index])
                out[f"{prefix}_pmf1_{suffix}"] = _mean(self.positive_macro_f1[index])
                out[f"{prefix}_cgf1_{suffix}"] = _mean(self.cgf1_macro[index])
            out[f"{prefix}_pmf1_w0dt_50_95"] = _mean(self.positive_macro_f1_w0dt)
            out[f"{prefix}_cgf1_w0dt_50_95"] = _mean(self.cgf1_macro_w0dt)
        return out


def summarize_cgf1(pairs: list[PairCounts]) -> CGF1Summary:
    """Accumulates per-pair counts into the dataset-level metrics."""
    num_thr = len(IOU_THRESHOLDS)
    tp, fp, fn, positive_fp = (np.zeros(num_thr, dtype=np.int64) for _ in range(4))
    f1_sum = np.zeros(num_thr)
    num_tp_pairs = num_positive_pairs = 0
    il_tp = il_fp = il_tn = il_fn = 0
    for pair in pairs:
        has_gt, has_pred = pair.num_gt > 0, pair.num_pred > 0
        il_tp += has_gt and has_pred
        il_fn += has_gt and not has_pred
        il_fp += has_pred and not has_gt
        il_tn += not has_gt and not has_pred
        if pair.tp is None:
            continue
        tp += pair.tp
        fp += pair.fp
        fn += pair.fn
        if has_gt:
            num_positive_pairs += 1
            positive_fp += pair.fp
            if has_pred:
                num_tp_pairs += 1
                f1_sum += _f1(pair.tp, pair.fp, pair.fn)
    precision = tp / (tp + fp + 1e-4)
    positive_precision = tp / (tp + positive_fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    mcc_denominator = float(il_tp + il_fp) * float(il_tp + il_fn) * float(il_tn + il_fp) * float(il_tn + il_fn)
    il_mcc = float(il_tp * il_tn - il_fp * il_fn) / (mcc_denominator**0.5 + 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = f1_sum / num_tp_pairs if num_tp_pairs else np.zeros(num_thr)
        macro_w0dt = f1_sum / num_positive_pairs if num_positive_pairs else np.zeros(num_thr)
    return CGF1Summary(
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall + 1e-4),
        positive_micro_f1=2 * positive_precision * recall / (positive_precision + recall + 1e-4),
        positive_macro_f1=macro,
        positive_macro_f1_w0dt=macro_w0dt,
        il_mcc=il_mcc,
    )


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    precision = tp / (tp + fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    return 2 * precision * recall / (precision + recall + 1e-4)


def _mean(values: np.ndarray | float) -> float:
    return float(np.mean(values))
