"""Masklet linking: per-frame detections of one (video, prompt) joined across frames into masklets.

Frame by frame, the live masklets (each represented by its last detected mask, optionally moved
by its centroid velocity) are matched to the frame's detections by Hungarian matching on mask IoU; a match needs IoU >= `match_iou_thresh`.
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

__all__ = [
    "LinkingConfig",
    "FrameMasks",
    "LinkedMasklet",
    "frame_masks",
    "link_masklets",
    "masklets_to_records",
    "link_video",
]


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
        use_motion: compare detections with the masklet's last mask moved by its centroid velocity
            (constant-velocity prediction) instead of the last mask where it was.
    """

    match_iou_thresh: float = 0.3
    birth_score_thresh: float = 0.0
    max_gap: int = 0
    min_length: int = 1
    score_reduction: Literal["mean", "max"] = "mean"
    use_motion: bool = False


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
        config: birth, death, gap and motion rules.
    """
    num_frames = len(frames)
    tracks: list[_Track] = []
    for t, frame in enumerate(frames):
        live = [track for track in tracks if t - track.last_frame - 1 <= config.max_gap]
        matched: set[int] = set()
        if live and len(frame.scores):
            expected = torch.stack([track.expected_mask(t, config.use_motion) for track in live])  # (K, H, W)
            ious = mask_iou(expected, frame.masks.bool()).cpu().numpy()  # (K, N)
            rows, cols = linear_sum_assignment(-ious)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                if ious[r, c] >= config.match_iou_thresh:
                    live[r].add(t, c, frame.masks[c].bool())
                    matched.add(c)
        for c in range(len(frame.scores)):
            if c not in matched and float(frame.scores[c]) >= config.birth_score_thresh:
                track = _Track([None] * num_frames)
                track.add(t, c, frame.masks[c].bool())
                tracks.append(track)
    out = []
    for track in tracks:
        scores = [float(frames[t].scores[i]) for t, i in enumerate(track.detection_idx) if i is not None]
        if len(scores) < config.min_length:
            continue
        score = max(scores) if config.score_reduction == "max" else float(np.mean(scores))
        out.append(LinkedMasklet(detection_idx=track.detection_idx, score=score))
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
        for frame, i in zip(frames, masklet.detection_idx, strict=True):
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


def link_video(
    video_id: Any,
    category_ids: Sequence[int],
    frames: Sequence[Sequence[FramePredictions]],
    size: tuple[int, int],
    config: LinkingConfig,
) -> list[dict[str, Any]]:
    """Prediction records of one video: every prompt's per-frame predictions linked into masklets.

    Args:
        video_id: the video's id in the ground truth.
        category_ids: the P prompts' category ids.
        frames: T frames, each with the P prompts' original-size predictions (in `category_ids` order).
        size: the video's original (height, width).
        config: linking rules.
    """
    records = []
    for p, category_id in enumerate(category_ids):
        per_frame = [frame[p] for frame in frames]
        masklets = link_masklets([frame_masks(pred, size) for pred in per_frame], config)
        records += masklets_to_records(video_id, category_id, per_frame, masklets)
    return records


class _Track:
    """A masklet being linked: its detections so far, its last mask and the motion of its centroid."""

    def __init__(self, detection_idx: list[int | None]) -> None:
        self.detection_idx = detection_idx
        self.last_frame = -1
        self.last_mask: torch.Tensor | None = None
        self.centroid: torch.Tensor | None = None
        self.velocity = torch.zeros(2)  # (dy, dx) pixels per frame

    def add(self, t: int, det_idx: int, mask: torch.Tensor) -> None:
        centroid = _centroid(mask)
        if self.centroid is not None and centroid is not None:
            self.velocity = (centroid - self.centroid) / (t - self.last_frame)
        self.detection_idx[t] = det_idx
        self.last_frame = t
        self.last_mask = mask
        self.centroid = centroid if centroid is not None else self.centroid

    def expected_mask(self, t: int, use_motion: bool) -> torch.Tensor:
        """The last mask, shifted by the centroid velocity times the frames elapsed when `use_motion`."""
        if not use_motion:
            return self.last_mask
        dy, dx = (self.velocity * (t - self.last_frame)).round().long().tolist()
        return _shift(self.last_mask, dy, dx)


def _centroid(mask: torch.Tensor) -> torch.Tensor | None:
    ys, xs = mask.nonzero(as_tuple=True)
    if ys.numel() == 0:
        return None
    return torch.stack([ys.float().mean(), xs.float().mean()]).cpu()


def _shift(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(H, W) mask moved by (dy, dx) pixels; what leaves the frame is dropped, what enters is empty."""
    height, width = mask.shape
    out = torch.zeros_like(mask)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out
