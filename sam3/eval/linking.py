"""Masklet linking: per-frame detections of one (video, prompt) joined across frames into masklets.

Frame by frame, the live masklets (each represented by its last detected mask) are matched to the
frame's detections by Hungarian matching on mask IoU; a match needs IoU >= `match_iou_thresh`.
Unmatched detections with score >= `birth_score_thresh` start new masklets (birth); a masklet missed
for more than `max_gap` consecutive frames stops being matchable (death). At the end, masklets detected
in fewer than `min_length` frames are dropped, and each masklet gets a score (mean or max of its
per-frame detection scores). Everything here is a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sam3.eval.postprocess import FramePredictions
from sam3.ops.masks import mask_iou, rle_decode

__all__ = ["LinkingConfig", "FrameMasks", "LinkedMasklet", "frame_masks", "link_masklets", "masklets_to_records"]


@dataclass(frozen=True)
class LinkingConfig:
    """Rules of masklet linking.

    Attributes:
        match_iou_thresh: smallest mask IoU between a masklet's last mask and a detection to continue it.
        birth_score_thresh: an unmatched detection starts a masklet only with a score >= this.
        max_gap: frames a masklet may go undetected and still be continued afterwards (0: must be
            detected in every frame to continue).
        min_length: masklets detected in fewer frames are dropped.
        score_reduction: masklet score from its per-frame detection scores, "mean" or "max".
    """

    match_iou_thresh: float = 0.3
    birth_score_thresh: float = 0.0
    max_gap: int = 0
    min_length: int = 1
    score_reduction: Literal["mean", "max"] = "mean"


@dataclass
class FrameMasks:
    """Detections of one frame for linking: (N, H, W) bool masks and (N,) scores."""

    masks: torch.Tensor
    scores: torch.Tensor


@dataclass
class LinkedMasklet:
    """A masklet: for each of the T frames, the index of its detection in that frame, or None.

    Attributes:
        detection_idx: length T.
        score: the masklet score (see `LinkingConfig.score_reduction`).
    """

    detection_idx: list[int | None]
    score: float

    @property
    def num_detected(self) -> int:
        return sum(i is not None for i in self.detection_idx)


def frame_masks(predictions: FramePredictions, size: tuple[int, int]) -> FrameMasks:
    """Linking input from one frame's original-size predictions (RLEs decoded unless dense masks are kept).

    Args:
        predictions: the frame's predictions for one prompt.
        size: the frame's (height, width), for frames without detections.
    """
    if predictions.masks is not None:
        masks = predictions.masks
    elif predictions.rles:
        masks = rle_decode(predictions.rles)
    else:
        masks = torch.zeros(0, *size, dtype=torch.bool)
    return FrameMasks(masks=masks, scores=predictions.scores)


def link_masklets(frames: Sequence[FrameMasks], config: LinkingConfig) -> list[LinkedMasklet]:
    """Links the detections of T consecutive frames into masklets, ordered by first appearance.

    Args:
        frames: the T frames' detections (masks of every frame at the same resolution).
        config: birth, death and gap rules.
    """
    num_frames = len(frames)
    tracks: list[dict[str, Any]] = []  # {"idx": per-frame detection index, "mask": last mask, "last": frame}
    for t, frame in enumerate(frames):
        live = [k for k, tr in enumerate(tracks) if t - tr["last"] - 1 <= config.max_gap]
        matched_dets: set[int] = set()
        if live and len(frame.scores):
            last_masks = torch.stack([tracks[k]["mask"] for k in live])  # (K, H, W)
            ious = mask_iou(last_masks, frame.masks.bool()).cpu().numpy()  # (K, N)
            rows, cols = linear_sum_assignment(-ious)
            for r, c in zip(rows, cols):
                if ious[r, c] >= config.match_iou_thresh:
                    track = tracks[live[r]]
                    track["idx"][t] = int(c)
                    track["mask"] = frame.masks[c].bool()
                    track["last"] = t
                    matched_dets.add(int(c))
        for c in range(len(frame.scores)):
            if c not in matched_dets and float(frame.scores[c]) >= config.birth_score_thresh:
                idx: list[int | None] = [None] * num_frames
                idx[t] = c
                tracks.append({"idx": idx, "mask": frame.masks[c].bool(), "last": t})
    out = []
    for track in tracks:
        scores = [float(frames[t].scores[i]) for t, i in enumerate(track["idx"]) if i is not None]
        if len(scores) < config.min_length:
            continue
        score = max(scores) if config.score_reduction == "max" else float(np.mean(scores))
        out.append(LinkedMasklet(detection_idx=track["idx"], score=score))
    return out


def masklets_to_records(
    video_id: Any,
    category_id: int,
    frames: Sequence[FramePredictions],
    masklets: Sequence[LinkedMasklet],
) -> list[dict[str, Any]]:
    """SA-Co/VEval prediction records of one (video, prompt): per-frame xywh boxes, RLEs and areas.

    Frames where a masklet is not detected get None box, segmentation and area.
    """
    records = []
    for masklet in masklets:
        boxes, segmentations, areas = [], [], []
        for frame, i in zip(frames, masklet.detection_idx):
            if i is None:
                boxes.append(None)
                segmentations.append(None)
                areas.append(None)
                continue
            boxes.append([float(v) for v in frame.boxes_xywh[i].tolist()])
            segmentations.append(frame.rles[i] if frame.rles else None)
            areas.append(int(frame.areas[i]))
        records.append(
            {
                "video_id": video_id,
                "category_id": category_id,
                "score": masklet.score,
                "bboxes": boxes,
                "segmentations": segmentations,
                "areas": areas,
            }
        )
    return records
