"""Track mode of video evaluation: text -> masklets by detecting, then propagating with the memory tracker.

For one video and its P phrases (`eval.mode: track`, dispatched by `sam3.eval.evaluate.evaluate`):
1. The ViT runs once per frame: `VLBackbone.forward_image(with_sam2=True)` returns the detector's pyramid
   and the tracker's `sam2_*` pyramid from one trunk pass. The tracker's per-frame features
   (`Tracker.frame_features`) are kept for every frame and handed to the tracker as `cached_features`,
   so it never runs the backbone again (its `VideoTracker` is built without one).
2. On detection frames (frame 0, or every `detect_every` frames) the detector grounds every phrase; its
   detections are selected exactly as for detector-only linking (`eval.selection`: top-k, score
   threshold, mask NMS) and mapped to the original frame size.
3. On frame 0 every selected detection of a phrase becomes a tracker object (`add_new_mask` with its
   original-size mask). On a later detection frame, a detection becomes a new object only when its mask
   IoU with every object of its phrase already tracked on that frame is <= `new_object_iou_thresh`.
   The new objects of one (phrase, detection frame) form one tracker session that starts there and is
   propagated forward to the last frame; all sessions advance together frame by frame, so the
   tracked masks on a detection frame are known before its detections are compared with them.
4. Every object is one masklet: its thresholded video-size mask (logit > 0) on each frame from its first
   one (None before, and where the mask is empty); its score is the score of the detection that started it.
   An object whose mask is empty on every frame (e.g. a tiny detection lost when the tracker resamples it
   to its low-resolution mask grid) yields no masklet.

What it does not do yet (Meta's video predictor does): hot start, keep-alive / removal of objects the
detector stops confirming, reconditioning tracked objects on matched detections, occlusion suppression
between objects of different sessions, backward propagation to frames before an object's first detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sam3.distributed.video_inference import INFERENCE_KEYS
from sam3.eval.postprocess import FrameDetections, FramePredictions, to_original_size
from sam3.model.tracker import TrackerFrameFeatures
from sam3.ops.masks import RLE, mask_iou, rle_area, rle_encode, rle_to_box_xywh
from sam3.tracking import TrackedFrame, TrackingState, VideoTracker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sam3.distributed.video_inference import FramePostprocess
    from sam3.eval.evaluate import EvalConfig
    from sam3.model.sam3_image import Sam3Image

__all__ = ["TrackConfig", "TrackedMasklet", "VideoDetections", "encode_video", "track_phrase", "masklet_records"]


@dataclass(frozen=True, kw_only=True)
class TrackConfig:
    """The `eval.track` section: how detections become tracker objects.

    Attributes:
        detect_every: run the detector on frames 0, k, 2k, ... (k = this); None = frame 0 only.
        new_object_iou_thresh: on a later detection frame, a detection starts a new object only if its
            mask IoU with every already tracked object of its phrase on that frame is <= this.
        offload_features_to_cpu: keep the per-frame tracker features (one set per frame of the video)
            in CPU memory instead of on the model's device.
    """

    detect_every: int | None = None
    new_object_iou_thresh: float = 0.3
    offload_features_to_cpu: bool = False

    def __post_init__(self) -> None:
        if self.detect_every is not None and (isinstance(self.detect_every, bool) or int(self.detect_every) < 1):
            raise ValueError(
                f"eval.track.detect_every={self.detect_every!r}: expected a positive number of frames, "
                "or null to detect on frame 0 only"
            )
        if not 0.0 <= float(self.new_object_iou_thresh) <= 1.0:
            raise ValueError(
                f"eval.track.new_object_iou_thresh={self.new_object_iou_thresh!r}: expected a value in [0, 1]"
            )

    def detection_frames(self, num_frames: int) -> list[int]:
        """The frames the detector runs on."""
        step = num_frames if self.detect_every is None else int(self.detect_every)
        return list(range(0, num_frames, step))


@dataclass
class VideoDetections:
    """One backbone pass over a video.

    Attributes:
        features: frame -> the tracker's features of that frame (batch 1).
        predictions: detection frame -> the P phrases' selected detections at the original size
            (`FramePredictions` with dense `masks` (N, H, W) bool).
    """

    features: dict[int, TrackerFrameFeatures]
    predictions: dict[int, list[FramePredictions]]


@dataclass
class TrackedMasklet:
    """One tracker object of one phrase through the video.

    Attributes:
        first_frame: the detection frame that started it.
        score: the score of that detection.
        rles: per frame, the COCO RLE of its video-size mask; None before `first_frame` and where empty.
    """

    first_frame: int
    score: float
    rles: list[RLE | None]


@torch.no_grad()
def encode_video(
    model: Sam3Image,
    load_frame: Callable[[int], torch.Tensor],
    num_frames: int,
    texts: list[str],
    size: tuple[int, int],
    *,
    select: FramePostprocess,
    selection: EvalConfig,
    config: TrackConfig,
) -> VideoDetections:
    """Runs the ViT once per frame; grounds the phrases on the detection frames.

    Args:
        model: a grounding model with a tracker (`model.tracker`) and the neck's `sam2_convs` pyramid.
        load_frame: frame t as a (3, S, S) normalised image on the model's device.
        num_frames: T.
        texts: the P phrases.
        size: the video's original (height, width).
        select: per-frame detection selection (the hook detector-only evaluation applies before its gather).
        selection: its settings (`min_score`, `mask_logit_thresh` are read here).
        config: detection frames and feature placement.
    """
    if getattr(model, "tracker", None) is None:
        raise ValueError(
            "eval.mode=track needs a model with a tracker: build it with model.tracker set (configs/model/sam3.yaml) "
            "and model.backbone.vision_backbone.use_sam2_convs=true, or use eval.mode=link"
        )
    detect_on = set(config.detection_frames(num_frames))
    text = model.backbone.forward_text(texts)
    num_prompts = len(texts)
    features: dict[int, TrackerFrameFeatures] = {}
    predictions: dict[int, list[FramePredictions]] = {}
    for t in range(num_frames):
        vision = model.backbone.forward_image(load_frame(t).unsqueeze(0), with_sam2=True)  # one trunk pass
        frame_features = model.tracker.frame_features(vision["sam2_backbone_fpn"], vision["sam2_vision_pos_enc"])
        features[t] = frame_features.to("cpu") if config.offload_features_to_cpu else frame_features
        if t not in detect_on:
            continue
        device = vision["backbone_fpn"][-1].device
        slots = torch.zeros(num_prompts, dtype=torch.int64, device=device)
        output = model.forward_grounding(vision, text, slots, torch.arange(num_prompts, device=device))
        tensors = select(t, {k: getattr(output, k) for k in INFERENCE_KEYS if getattr(output, k) is not None})
        if "mask_logits" not in tensors:
            raise ValueError("eval.mode=track needs mask predictions: build the model with a segmentation head")
        per_prompt = []
        for p in range(num_prompts):
            keep = tensors["scores"][p] > selection.min_score
            detections = FrameDetections(
                scores=tensors["scores"][p][keep].cpu(),
                boxes_cxcywh=tensors["boxes_cxcywh"][p][keep].cpu(),
                mask_logits=tensors["mask_logits"][p][keep].cpu(),
                query_idx=keep.nonzero(as_tuple=True)[0].cpu(),
            )
            per_prompt.append(to_original_size(detections, size, selection.mask_logit_thresh, keep_masks=True))
        predictions[t] = per_prompt
    return VideoDetections(features=features, predictions=predictions)


def track_phrase(
    video_tracker: VideoTracker,
    features: dict[int, TrackerFrameFeatures],
    detections: dict[int, FramePredictions],
    num_frames: int,
    size: tuple[int, int],
    config: TrackConfig,
) -> list[TrackedMasklet]:
    """One phrase's detections -> tracker objects -> masklets (see the module docstring, steps 3-4).

    Args:
        video_tracker: the session API around the model's tracker (no backbone needed).
        features: every frame's tracker features.
        detections: detection frame -> the phrase's selected detections (dense original-size masks).
        num_frames: T.
        size: the video's original (height, width).
        config: the new-object rule.

    Returns:
        The masklets with a mask on at least one frame, ordered by first frame, then by detection score.
    """
    sessions: list[_Session] = []
    for t in range(num_frames):
        tracked = [session.step(t) for session in sessions]  # (B_s, H, W) bool each
        found = detections.get(t)
        if found is None or not len(found):
            continue
        masks = found.masks.cpu()
        candidates = [i for i in range(len(found)) if bool(masks[i].any())]
        if tracked and candidates:
            previous = torch.cat(tracked)
            if len(previous):
                best = mask_iou(masks[candidates], previous).amax(dim=1)  # (N,)
                candidates = [
                    i for i, iou in zip(candidates, best.tolist(), strict=True) if iou <= config.new_object_iou_thresh
                ]
        if not candidates:
            continue
        state = video_tracker.init_state(
            cached_features=features, video_height=size[0], video_width=size[1], num_frames=num_frames
        )
        for obj_id, i in enumerate(candidates):
            video_tracker.add_new_mask(state, t, obj_id, masks[i])
        session = _Session(
            state,
            video_tracker.propagate_in_video(state, start_frame_idx=t),
            first_frame=t,
            scores=[float(found.scores[i]) for i in candidates],
            num_frames=num_frames,
        )
        session.step(t)
        sessions.append(session)
    return [masklet for session in sessions for masklet in session.masklets()]


def masklet_records(video_id: Any, category_id: Any, masklets: list[TrackedMasklet]) -> list[dict[str, Any]]:
    """SA-Co/VEval prediction records (the detector-only linking's format): per-frame xywh boxes, RLEs, areas."""
    records = []
    for masklet in masklets:
        boxes, areas = [], []
        for rle in masklet.rles:
            if rle is None:
                boxes.append(None)
                areas.append(None)
                continue
            boxes.append([float(v) for v in rle_to_box_xywh([rle])[0].tolist()])
            areas.append(int(rle_area([rle])[0]))
        records.append(
            {
                "video_id": video_id,
                "category_id": category_id,
                "score": masklet.score,
                "bboxes": boxes,
                "segmentations": list(masklet.rles),
                "areas": areas,
            }
        )
    return records


class _Session:
    """The objects one (phrase, detection frame) started, propagated forward one frame per `step`."""

    def __init__(
        self,
        state: TrackingState,
        frames: Iterator[TrackedFrame],
        *,
        first_frame: int,
        scores: list[float],
        num_frames: int,
    ) -> None:
        self.state = state
        self.frames = frames
        self.first_frame = first_frame
        self.scores = scores
        self.rles: list[list[RLE | None]] = [[None] * num_frames for _ in scores]

    def step(self, t: int) -> torch.Tensor:
        """Propagates to frame t; returns its objects' (B, H, W) bool masks there."""
        frame = next(self.frames)
        assert frame.frame_idx == t, (
            f"session started on frame {self.first_frame} yielded {frame.frame_idx}, expected {t}"
        )
        masks = (frame.video_res_masks[:, 0] > 0).cpu()  # B, H, W
        for obj_idx, rle in enumerate(rle_encode(masks)):
            if bool(masks[obj_idx].any()):
                self.rles[obj_idx][t] = rle
        return masks

    def masklets(self) -> list[TrackedMasklet]:
        """The objects with a mask on at least one frame."""
        return [
            TrackedMasklet(first_frame=self.first_frame, score=score, rles=rles)
            for score, rles in zip(self.scores, self.rles, strict=True)
            if any(rle is not None for rle in rles)
        ]
