"""Phrase HOTA (Luiten et al., IJCV 2020) over (video, phrase) pairs, computed by TrackEval's `HOTA`.

Every (video, phrase) pair is its own sequence of one class (SAM3's "phrase" HOTA). Predictions with
score > 0.5 count as detections (their scores are not used otherwise); a prediction's frame counts
only where its area is non-zero and its box is not all zeros. Similarity is the per-frame IoU: float32
box IoU or RLE mask IoU. This module builds TrackEval's per-sequence input and combines the sequences
as TrackEval's evaluator does; the metric itself is `trackeval.metrics.HOTA`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from trackeval.metrics import HOTA

from sam3.eval.saco_format import Masklet
from sam3.eval.track_iou import frame_box_iou, frame_mask_iou

__all__ = ["HOTA_FIELDS", "SequenceHota", "phrase_hota"]

HOTA_FIELDS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA")


class SequenceHota(dict):
    """TrackEval's HOTA result of one sequence or of the combination (field -> array over alphas)."""

    def summary(self) -> dict[str, float]:
        """The nine HOTA_FIELDS, each averaged over the 19 localisation thresholds."""
        return {name: float(np.mean(self[name])) for name in HOTA_FIELDS}


def phrase_hota(
    sequences: Sequence[tuple[int, Sequence[Masklet], Sequence[Masklet]]],
    use_masks: bool,
    score_thresh: float = 0.5,
) -> tuple[SequenceHota, list[SequenceHota]]:
    """HOTA of each (video, phrase) sequence and of all of them combined.

    Args:
        sequences: (num_frames, ground-truth masklets, predicted masklets) per (video, phrase) pair.
        use_masks: mask IoU when True, box IoU otherwise.
        score_thresh: predictions with score > score_thresh are kept.

    Returns:
        (combined result, per-sequence results in input order).
    """
    metric = HOTA()
    per_sequence = []
    for num_frames, gts, preds in sequences:
        kept = [p for p in preds if p.score > score_thresh]
        data = _sequence_data(num_frames, gts, kept, use_masks)
        per_sequence.append(SequenceHota(metric.eval_sequence(data)))
    if not per_sequence:
        empty = SequenceHota(metric.eval_sequence(_sequence_data(0, [], [], use_masks)))
        return empty, []
    combined = metric.combine_sequences(dict(enumerate(per_sequence)))
    combined = metric.combine_classes_class_averaged({"phrase": combined})
    return SequenceHota(combined), per_sequence


def _sequence_data(num_frames: int, gts: Sequence[Masklet], preds: Sequence[Masklet], use_masks: bool) -> dict:
    """TrackEval's per-sequence input: per frame the present ids and their similarity (G_t, D_t)."""
    gt_dets = [[_gt_det(m, t, use_masks) for m in gts] for t in range(num_frames)]
    pred_dets = [[_pred_det(m, t, use_masks) for m in preds] for t in range(num_frames)]
    gt_ids_raw = [np.array([i for i, d in enumerate(dets) if d is not None], dtype=int) for dets in gt_dets]
    pred_ids_raw = [np.array([i for i, d in enumerate(dets) if d is not None], dtype=int) for dets in pred_dets]
    gt_ids = _relabel(gt_ids_raw)
    pred_ids = _relabel(pred_ids_raw)
    similarity = []
    for t in range(num_frames):
        g = [gt_dets[t][i] for i in gt_ids_raw[t]]
        p = [pred_dets[t][i] for i in pred_ids_raw[t]]
        if use_masks:
            similarity.append(frame_mask_iou(g, p))
        else:
            similarity.append(frame_box_iou(np.array(g).reshape(-1, 4), np.array(p).reshape(-1, 4)))
    return {
        "gt_ids": gt_ids,
        "tracker_ids": pred_ids,
        "similarity_scores": similarity,
        "num_gt_dets": sum(len(ids) for ids in gt_ids),
        "num_tracker_dets": sum(len(ids) for ids in pred_ids),
        "num_gt_ids": len(set().union(*[set(ids.tolist()) for ids in gt_ids])) if gt_ids else 0,
        "num_tracker_ids": len(set().union(*[set(ids.tolist()) for ids in pred_ids])) if pred_ids else 0,
        "num_timesteps": num_frames,
    }


def _gt_det(masklet: Masklet, t: int, use_masks: bool):
    return masklet.segmentations[t] if use_masks else masklet.boxes_xywh[t]


def _pred_det(masklet: Masklet, t: int, use_masks: bool):
    box, area = masklet.boxes_xywh[t], masklet.areas[t]
    if box is None or area == 0 or all(x == 0 for x in box):
        return None
    return masklet.segmentations[t] if use_masks else box


def _relabel(ids_per_frame: list[np.ndarray]) -> list[np.ndarray]:
    """Maps the masklet indices present in any frame to 0..K-1 (in index order), as TrackEval does."""
    present = sorted(set().union(*[set(ids.tolist()) for ids in ids_per_frame])) if ids_per_frame else []
    new_id = {old: new for new, old in enumerate(present)}
    return [np.array([new_id[i] for i in ids.tolist()], dtype=int) for ids in ids_per_frame]
