"""Video object tracking with SAM3's memory tracker: a session API with the semantics of SAM2 / SAM3's
video predictors (`init_state`, `add_new_points_or_box`, `add_new_mask`, `propagate_in_video`,
`remove_object`, `reset_state`).

A session (`TrackingState`) holds per object its prompts and per frame its outputs. Prompts are first
kept as temporary per-object outputs; `propagate_in_video` consolidates them (all objects of a frame
together, masks made non-overlapping and binarised) into conditioning frames and encodes their memory,
then tracks the other frames with all objects in one batch. Outputs are stored twice, as Meta's
predictor does: packed per frame (`bank`, read while propagating) and as per-object views (`per_obj`,
read by later prompts on one object); a correction on a tracked frame makes it a conditioning frame.

Features: frames come from a folder of images, a tensor, or precomputed `TrackerFrameFeatures`
(`cached_features`, e.g. from a backbone pass shared with the detector). The ViT then runs once per frame.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam3.model.tracker import NO_OBJ_SCORE, FrameOutput, MemoryBank, Tracker, TrackerFrameFeatures
from sam3.model.vl_backbone import VLBackbone

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PREV_LOGITS_CLAMP = 32.0
NON_OVERLAP_CLAMP = -10.0
MASK_INPUT_THRESHOLD = 0.5
DEFAULT_FEATURE_CACHE = 2


class FrameExchange(Protocol):
    """(frame_idx, this session's output or None, its (B, 1, 4h, 4w) masks or None, conditioning?) ->
    the (N, 1, 4h, 4w) masks and (N, 1) scores to return for the frame."""

    def __call__(
        self, frame_idx: int, out: FrameOutput | None, masks: torch.Tensor | None, is_cond: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class TrackedFrame(NamedTuple):
    """One frame of a session's output (unpacks like Meta's tuples).

    Attributes:
        frame_idx: the frame.
        obj_ids: the session's object ids, in the order of the mask rows.
        low_res_masks: (B, 1, 4h, 4w) logits, None for prompt calls.
        video_res_masks: (B, 1, H, W) logits at video size.
        object_score_logits: (B, 1), None for prompt calls.
    """

    frame_idx: int
    obj_ids: list[int]
    low_res_masks: torch.Tensor | None
    video_res_masks: torch.Tensor
    object_score_logits: torch.Tensor | None


@dataclass
class TrackingState:
    """One video session. Object index = position in `obj_ids`."""

    num_frames: int
    video_hw: tuple[int, int]
    device: torch.device
    storage_device: torch.device
    images: torch.Tensor | None = None  # T, 3, S, S normalised frames (None with cached features only)
    cached_features: dict[int, TrackerFrameFeatures] = field(default_factory=dict)
    feature_lru: OrderedDict[int, TrackerFrameFeatures] = field(default_factory=OrderedDict)
    obj_ids: list[int] = field(default_factory=list)
    point_inputs: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    mask_inputs: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    bank: MemoryBank = field(default_factory=MemoryBank)
    per_obj: dict[int, MemoryBank] = field(default_factory=dict)
    temp: dict[int, MemoryBank] = field(default_factory=dict)
    consolidated: set[int] = field(default_factory=set)  # prompted frames merged into `bank.cond`
    tracking_has_started: bool = False
    frames_tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse
    first_ann_frame_idx: int | None = None
    memory_pos: torch.Tensor | None = None  # (1, mem_dim, h, w), the same for every memory

    @property
    def num_objects(self) -> int:
        return len(self.obj_ids)


class VideoTracker:
    """Click / box / mask prompts on some frames -> masklets through a video.

    Args:
        tracker: the memory tracker.
        backbone: computes features of frames not in `cached_features` (its neck needs `sam2_convs`).
        non_overlap_masks_for_output: one object per pixel in the returned video-size masks.
        clear_non_cond_mem_around_input: forget tracked memories within `num_maskmem` frames of a new
            prompt (single-object sessions unless `clear_non_cond_mem_for_multi_obj`).
        clear_non_cond_mem_for_multi_obj: also clear in multi-object sessions.
        max_point_num_in_prompt_enc: more clicks than this keep the first half and the newest rest.
        feature_cache_size: frames whose computed features are kept (besides `cached_features`).
    """

    def __init__(
        self,
        tracker: Tracker,
        backbone: VLBackbone | None = None,
        *,
        non_overlap_masks_for_output: bool = False,
        clear_non_cond_mem_around_input: bool = True,
        clear_non_cond_mem_for_multi_obj: bool = False,
        max_point_num_in_prompt_enc: int = 16,
        feature_cache_size: int = DEFAULT_FEATURE_CACHE,
    ) -> None:
        self.tracker = tracker
        self.backbone = backbone
        self.non_overlap_masks_for_output = non_overlap_masks_for_output
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.clear_non_cond_mem_for_multi_obj = clear_non_cond_mem_for_multi_obj
        self.max_point_num_in_prompt_enc = max_point_num_in_prompt_enc
        self.feature_cache_size = feature_cache_size

    @property
    def device(self) -> torch.device:
        return next(self.tracker.parameters()).device

    # ------------------------------------------------------------------ session
    @torch.inference_mode()
    def init_state(
        self,
        frames: str | Path | torch.Tensor | None = None,
        *,
        video_height: int | None = None,
        video_width: int | None = None,
        num_frames: int | None = None,
        cached_features: dict[int, TrackerFrameFeatures] | None = None,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
    ) -> TrackingState:
        """Start a session.

        Args:
            frames: a folder of images (sorted by name), or a (T, 3, H, W) tensor (uint8, or float in [0, 1]);
                None with `cached_features` for every frame.
            video_height, video_width, num_frames: the video's size; taken from `frames` when given.
            cached_features: frame -> precomputed features (batch 1).
            offload_video_to_cpu: keep the resized frames in CPU memory.
            offload_state_to_cpu: keep memories and masks in CPU memory.
        """
        images = None
        if frames is not None:
            images, (video_height, video_width) = load_frames(frames, self.tracker.image_size)
            num_frames = images.shape[0]
            if self.backbone is None:
                raise ValueError("frames need a backbone to embed them: build VideoTracker(tracker, backbone)")
            images = images if offload_video_to_cpu else images.to(self.device)
        if num_frames is None or video_height is None or video_width is None:
            raise ValueError("give frames, or video_height, video_width and num_frames with cached_features")
        cached = dict(cached_features or {})
        if images is None:
            missing = sorted(set(range(num_frames)) - set(cached))
            if missing:
                raise ValueError(f"no frames given and cached_features lack frames {missing[:10]}")
        device = self.device
        return TrackingState(
            num_frames=num_frames,
            video_hw=(video_height, video_width),
            device=device,
            storage_device=torch.device("cpu") if offload_state_to_cpu else device,
            images=images,
            cached_features=cached,
        )

    @torch.inference_mode()
    def reset_state(self, state: TrackingState) -> None:
        """Forget all objects, prompts and outputs (the frames and features stay)."""
        self._reset_tracking(state)
        state.obj_ids.clear()
        state.point_inputs.clear()
        state.mask_inputs.clear()
        state.per_obj.clear()
        state.temp.clear()

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        state: TrackingState,
        frame_idx: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | torch.Tensor | None = None,
        labels: Sequence[int] | torch.Tensor | None = None,
        *,
        box: Sequence[float] | torch.Tensor | None = None,
        clear_old_points: bool = True,
        rel_coordinates: bool = True,
        use_prev_mem_frame: bool = False,
    ) -> TrackedFrame:
        """Clicks (label 1 positive, 0 negative) and / or a box (x0, y0, x1, y1) for one object on one frame.

        Coordinates are relative ([0, 1], x first) with `rel_coordinates`, else model-input pixels. A box
        comes first, as two points labelled 2 and 3, and needs `clear_old_points`. Returns all objects'
        masks on the frame at video size.
        """
        self._check_frame(state, frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels go together: give both or neither")
        if points is None and box is None:
            raise ValueError("give points (with labels) and / or a box")
        coords = torch.as_tensor(points if points is not None else np.zeros((0, 2)), dtype=torch.float32)
        point_labels = torch.as_tensor(labels if labels is not None else [], dtype=torch.int64)
        coords, point_labels = coords.reshape(1, -1, 2), point_labels.reshape(1, -1)
        if coords.shape[1] != point_labels.shape[1]:
            raise ValueError(f"{coords.shape[1]} points but {point_labels.shape[1]} labels")
        scale = float(self.tracker.image_size) if rel_coordinates else 1.0
        coords = coords * scale
        if box is not None:
            if not clear_old_points:
                raise ValueError("a box must come before any click: add it with clear_old_points=True")
            corners = torch.as_tensor(box, dtype=torch.float32).reshape(1, 2, 2) * scale
            coords = torch.cat([corners, coords], dim=1)
            point_labels = torch.cat([torch.tensor([[2, 3]]), point_labels], dim=1)
        obj_idx = self._obj_index(state, obj_id)
        coords, point_labels = coords.to(state.device), point_labels.to(state.device)
        old = None if clear_old_points else state.point_inputs[obj_idx].get(frame_idx)
        if old is not None:
            coords, point_labels = torch.cat([old[0], coords], dim=1), torch.cat([old[1], point_labels], dim=1)
        coords, point_labels = self._limit_points(frame_idx, coords, point_labels)
        state.point_inputs[obj_idx][frame_idx] = (coords, point_labels)
        state.mask_inputs[obj_idx].pop(frame_idx, None)

        is_init_cond = frame_idx not in state.frames_tracked
        reverse = state.frames_tracked.get(frame_idx, False)
        prev = state.temp[obj_idx].cond.get(frame_idx) or state.per_obj[obj_idx].get(frame_idx)
        prev_logits = None
        if prev is not None and prev.pred_masks is not None:
            prev_logits = prev.pred_masks.to(state.device).clamp(-PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
        out, _ = self._run_frame(
            state,
            state.per_obj[obj_idx],
            frame_idx,
            batch=1,
            is_init_cond_frame=is_init_cond,
            points=(coords, point_labels),
            reverse=reverse,
            run_mem_encoder=False,
            prev_mask_logits=prev_logits,
            use_prev_mem_frame=use_prev_mem_frame,
        )
        state.temp[obj_idx].cond[frame_idx] = out
        return self._prompt_result(state, frame_idx)

    @torch.inference_mode()
    def add_new_mask(
        self, state: TrackingState, frame_idx: int, obj_id: int, mask: torch.Tensor | np.ndarray
    ) -> TrackedFrame:
        """A (H, W) mask (bool or [0, 1]) for one object on one frame, at any resolution. The returned
        masks show it thresholded at video size; other objects' prompt masks on the frame lose its pixels."""
        self._check_frame(state, frame_idx)
        mask = torch.as_tensor(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
        obj_idx = self._obj_index(state, obj_id)
        mask = mask[None, None].float().to(state.device)
        side = self.tracker.input_mask_size
        model_mask = _resize(mask, (side, side), antialias=True)
        video_mask = _resize(mask, state.video_hw, antialias=True) > MASK_INPUT_THRESHOLD
        state.mask_inputs[obj_idx][frame_idx] = video_mask
        state.point_inputs[obj_idx].pop(frame_idx, None)
        is_init_cond = frame_idx not in state.frames_tracked
        out, _ = self._run_frame(
            state,
            state.per_obj[obj_idx],
            frame_idx,
            batch=1,
            is_init_cond_frame=is_init_cond,
            mask=model_mask,
            reverse=state.frames_tracked.get(frame_idx, False),
            run_mem_encoder=False,
        )
        out.pred_masks = None
        out.video_res_masks = torch.where(video_mask, -NO_OBJ_SCORE, NO_OBJ_SCORE)
        state.temp[obj_idx].cond[frame_idx] = out
        for other, bank in state.temp.items():
            other_out = bank.cond.get(frame_idx)
            if other != obj_idx and other_out is not None and other_out.video_res_masks is not None:
                other_out.video_res_masks = torch.where(video_mask, NO_OBJ_SCORE, other_out.video_res_masks)
        return self._prompt_result(state, frame_idx)

    @torch.inference_mode()
    def clear_all_points_in_frame(self, state: TrackingState, frame_idx: int, obj_id: int, need_output: bool = True):
        """Remove one object's prompts on a frame; a frame left without prompts stops being a conditioning frame."""
        obj_idx = self._obj_index(state, obj_id)
        state.point_inputs[obj_idx].pop(frame_idx, None)
        state.mask_inputs[obj_idx].pop(frame_idx, None)
        state.temp[obj_idx].cond.pop(frame_idx, None)
        has_input = any(
            frame_idx in state.point_inputs[i] or frame_idx in state.mask_inputs[i] for i in range(state.num_objects)
        )
        if not has_input:
            state.consolidated.discard(frame_idx)
            out = state.bank.cond.pop(frame_idx, None)
            if out is not None:
                state.bank.non_cond[frame_idx] = out
                state.frames_tracked.pop(frame_idx, None)
            for bank in state.per_obj.values():
                obj_out = bank.cond.pop(frame_idx, None)
                if obj_out is not None:
                    bank.non_cond[frame_idx] = obj_out
            if not state.bank.cond:
                self._reset_tracking(state)
        if need_output:
            return self._prompt_result(state, frame_idx)
        return None

    @torch.inference_mode()
    def remove_object(
        self, state: TrackingState, obj_id: int, strict: bool = False, need_output: bool = True
    ) -> tuple[list[int], list[tuple[int, torch.Tensor]]]:
        """Drop an object from the session (also while tracking). Returns the remaining ids and the
        video-size masks of the frames where it had prompts."""
        if obj_id not in state.obj_ids:
            if strict:
                raise KeyError(f"object id {obj_id} is not in the session (ids: {state.obj_ids})")
            return list(state.obj_ids), []
        if state.num_objects == 1:
            self.reset_state(state)
            return [], []
        old_idx = state.obj_ids.index(obj_id)
        input_frames = set(state.point_inputs[old_idx]) | set(state.mask_inputs[old_idx])
        for frame_idx in sorted(input_frames):
            self.clear_all_points_in_frame(state, frame_idx, obj_id, need_output=False)
        keep = [i for i in range(state.num_objects) if i != old_idx]
        state.obj_ids = [state.obj_ids[i] for i in keep]
        for per_object in (state.point_inputs, state.mask_inputs, state.per_obj, state.temp):
            values = [per_object[i] for i in keep]
            per_object.clear()
            per_object.update(enumerate(values))
        for frames in (state.bank.cond, state.bank.non_cond):
            for frame_idx, out in frames.items():
                kept = out.select(keep)
                if kept.iou_score is not None:
                    kept.eff_iou_score = self.tracker.memory_score(kept.object_score_logits, kept.iou_score)
                frames[frame_idx] = kept
                self._add_output_per_object(state, frame_idx, kept, cond=frames is state.bank.cond)
        updated = []
        if need_output:
            updated = [(f, self._prompt_result(state, f).video_res_masks) for f in sorted(input_frames)]
        return list(state.obj_ids), updated

    # ------------------------------------------------------------------ propagation
    @torch.inference_mode()
    def propagate_in_video_preflight(self, state: TrackingState) -> None:
        """Consolidate the prompts of all objects per frame into conditioning frames and encode their memory."""
        state.tracking_has_started = True
        clear = self._clears_memory(state)
        frames = set()
        for bank in state.temp.values():
            frames.update(bank.cond)
        state.consolidated.update(frames)
        for frame_idx in sorted(frames):
            out = self._consolidate(state, frame_idx, run_mem_encoder=True)
            state.bank.cond[frame_idx] = out
            self._add_output_per_object(state, frame_idx, out, cond=True)
            if clear:
                self._clear_memory_around(state, frame_idx)
        for bank in state.temp.values():
            bank.clear()
        for bank in (state.bank, *state.per_obj.values()):
            for frame_idx in bank.cond:
                bank.non_cond.pop(frame_idx, None)
        input_frames = set()
        for i in range(state.num_objects):
            input_frames.update(state.point_inputs[i])
            input_frames.update(state.mask_inputs[i])
        if state.consolidated != input_frames:
            raise RuntimeError(
                f"session inconsistent: prompted frames {sorted(input_frames)} but consolidated {sorted(state.consolidated)}"
            )
        if state.first_ann_frame_idx is None:
            state.first_ann_frame_idx = min(input_frames, default=None)
        if state.first_ann_frame_idx not in state.bank.cond:
            state.first_ann_frame_idx = min(state.bank.cond, default=None)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        state: TrackingState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[TrackedFrame]:
        """Track all objects from `start_frame_idx` (default: the first prompted frame) over at most
        `max_frame_num_to_track` further frames, forward or in reverse; yields every frame's masks.
        Prompts given since the last call are consolidated first."""
        if not state.bank.cond and not any(bank.cond for bank in state.temp.values()):
            raise RuntimeError("no prompts yet: add points, a box or a mask first")
        self.propagate_in_video_preflight(state)
        order = self._processing_order(state, start_frame_idx, max_frame_num_to_track, reverse)
        yield from self.propagate_frames(state, order, reverse=reverse, clears_memory=self._clears_memory(state))

    def propagate_frames(
        self,
        state: TrackingState,
        order: Sequence[int],
        *,
        reverse: bool,
        clears_memory: bool,
        obj_ids: list[int] | None = None,
        exchange: FrameExchange | None = None,
    ) -> Iterator[TrackedFrame]:
        """The propagation loop over `order` on a consolidated session (`propagate_in_video` without the
        preflight). `exchange(frame_idx, out, masks, is_cond)` may replace the frame's low-res masks and
        scores (e.g. by those of all ranks' objects, `obj_ids` then naming the rows) before the frame is
        stored per object and returned; `out` is None when this session holds no object."""
        obj_ids = list(state.obj_ids) if obj_ids is None else obj_ids
        for frame_idx in order:
            out, masks, is_cond = None, None, frame_idx in state.consolidated
            if state.num_objects and is_cond:
                out = state.bank.cond[frame_idx]
                masks = out.pred_masks
                if clears_memory:
                    self._clear_memory_around(state, frame_idx)
            elif state.num_objects:
                out, masks = self._run_frame(
                    state,
                    state.bank,
                    frame_idx,
                    batch=state.num_objects,
                    is_init_cond_frame=False,
                    reverse=reverse,
                    run_mem_encoder=True,
                )
                state.bank.non_cond[frame_idx] = out
            scores = None if out is None else out.object_score_logits
            if exchange is not None:
                masks, scores = exchange(frame_idx, out, masks, is_cond)
            if out is not None:
                self._add_output_per_object(state, frame_idx, out, cond=is_cond)
            state.frames_tracked[frame_idx] = reverse
            yield TrackedFrame(frame_idx, list(obj_ids), masks, self._video_res(state, masks), scores)

    # ------------------------------------------------------------------ internals
    def _processing_order(
        self, state: TrackingState, start: int | None, max_frames: int | None, reverse: bool
    ) -> range | list[int]:
        if start is None:
            start = min(state.bank.cond)
        self._check_frame(state, start)
        max_frames = state.num_frames if max_frames is None else max_frames
        if reverse:
            end = max(start - max_frames, 0)
            return range(start, end - 1, -1) if start > 0 else [0]
        return range(start, min(start + max_frames, state.num_frames - 1) + 1)

    def _run_frame(
        self,
        state: TrackingState,
        bank: MemoryBank,
        frame_idx: int,
        *,
        batch: int,
        is_init_cond_frame: bool,
        reverse: bool,
        run_mem_encoder: bool,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        prev_mask_logits: torch.Tensor | None = None,
        use_prev_mem_frame: bool = True,
    ) -> tuple[FrameOutput, torch.Tensor]:
        """Track `batch` objects on a frame; returns the stored output and the low-res masks on device."""
        features = self._features(state, frame_idx).expand(batch)
        out, heads, pos = self.tracker.track_frame(
            frame_idx,
            features,
            bank,
            is_init_cond_frame=is_init_cond_frame,
            num_frames=state.num_frames,
            points=points,
            mask=mask,
            prev_mask_logits=prev_mask_logits,
            reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            use_prev_mem_frame=use_prev_mem_frame,
            memory_pos=state.memory_pos,
        )
        self._store(state, out, pos)
        masks = heads.low_res_masks
        out.pred_masks = masks.to(state.storage_device, non_blocking=True)
        return out, masks

    def _store(self, state: TrackingState, out: FrameOutput, pos: torch.Tensor | None) -> None:
        """Memories are kept in bfloat16 (as the released model keeps them), on the storage device."""
        if out.maskmem_features is not None:
            out.maskmem_features = out.maskmem_features.to(torch.bfloat16).to(state.storage_device, non_blocking=True)
        if pos is not None and state.memory_pos is None:
            state.memory_pos = pos[:1].clone()

    def _features(self, state: TrackingState, frame_idx: int) -> TrackerFrameFeatures:
        """The frame's features: given, recently computed, or computed now by the backbone."""
        if frame_idx in state.cached_features:
            return state.cached_features[frame_idx].to(state.device)
        if frame_idx in state.feature_lru:
            state.feature_lru.move_to_end(frame_idx)
            return state.feature_lru[frame_idx]
        if state.images is None or self.backbone is None:
            raise RuntimeError(f"no features for frame {frame_idx}: give frames and a backbone, or cached_features")
        image = state.images[frame_idx : frame_idx + 1].to(state.device, non_blocking=True)
        vision = self.backbone.forward_image(image, with_sam2=True)
        features = self.tracker.frame_features(vision["sam2_backbone_fpn"], vision["sam2_vision_pos_enc"])
        state.feature_lru[frame_idx] = features
        while len(state.feature_lru) > self.feature_cache_size:
            state.feature_lru.popitem(last=False)
        return features

    def _consolidate(
        self, state: TrackingState, frame_idx: int, *, run_mem_encoder: bool, video_res: bool = False
    ) -> FrameOutput:
        """All objects' newest outputs on a frame in one (B, ...) output; objects without any keep
        `NO_OBJ_SCORE` masks (and the `no_obj_ptr` pointer when the memory is encoded)."""
        n = state.num_objects
        hw = state.video_hw if video_res else (self.tracker.low_res_size,) * 2
        masks = torch.full((n, 1, *hw), NO_OBJ_SCORE, dtype=torch.float32, device=state.storage_device)
        obj_ptr = torch.full((n, self.tracker.d_model), NO_OBJ_SCORE, device=state.device)
        scores = torch.full((n, 1), 10.0, device=state.device)
        iou = torch.zeros(n, device=state.device) if self.tracker.use_memory_selection else None
        for i in range(n):
            out = state.temp[i].cond.get(frame_idx) or state.per_obj[i].get(frame_idx)
            if out is None:
                if run_mem_encoder:
                    obj_ptr[i] = self.tracker.no_obj_ptr[0]  # the pointer of an empty mask prompt
                continue
            obj_masks = out.video_res_masks if out.video_res_masks is not None else out.pred_masks
            if obj_masks.shape[-2:] != hw:
                obj_masks = _resize(obj_masks.float(), hw, antialias=out.video_res_masks is not None)
            masks[i : i + 1] = obj_masks
            obj_ptr[i : i + 1] = out.obj_ptr
            scores[i : i + 1] = out.object_score_logits
            if iou is not None:
                iou[i : i + 1] = out.iou_score.reshape(-1)
        out = FrameOutput(
            pred_masks=None if video_res else masks, obj_ptr=obj_ptr, object_score_logits=scores, iou_score=iou
        )
        if video_res:
            out.video_res_masks = masks
        if run_mem_encoder:
            side = self.tracker.image_size
            high_res = non_overlapping(_resize(masks.to(state.device), (side, side), antialias=False))
            pix = self._features(state, frame_idx).expand(n).pix
            features, pos = self.tracker.encode_memory(pix, high_res, scores, binarize=True)
            out.maskmem_features = features
            self._store(state, out, pos)
        return out

    def _add_output_per_object(self, state: TrackingState, frame_idx: int, out: FrameOutput, *, cond: bool) -> None:
        for i, bank in state.per_obj.items():
            (bank.cond if cond else bank.non_cond)[frame_idx] = out.select(slice(i, i + 1))

    def _prompt_result(self, state: TrackingState, frame_idx: int) -> TrackedFrame:
        out = self._consolidate(state, frame_idx, run_mem_encoder=False, video_res=True)
        return TrackedFrame(frame_idx, list(state.obj_ids), None, self._video_res(state, out.video_res_masks), None)

    def _video_res(self, state: TrackingState, masks: torch.Tensor) -> torch.Tensor:
        """Logits at video size (bilinear, no antialias), optionally one object per pixel."""
        masks = masks.to(state.device, non_blocking=True)
        if masks.shape[-2:] != state.video_hw:
            masks = _resize(masks, state.video_hw, antialias=False)
        return non_overlapping(masks) if self.non_overlap_masks_for_output else masks

    def _clears_memory(self, state: TrackingState) -> bool:
        return self.clear_non_cond_mem_around_input and (
            self.clear_non_cond_mem_for_multi_obj or state.num_objects <= 1
        )

    def _clear_memory_around(self, state: TrackingState, frame_idx: int) -> None:
        """Forget the per-object tracked outputs within `num_maskmem` frames of a prompted frame."""
        span = self.tracker.num_maskmem
        for bank in state.per_obj.values():
            for t in range(frame_idx - span, frame_idx + span + 1):
                bank.non_cond.pop(t, None)

    def _reset_tracking(self, state: TrackingState) -> None:
        for per_object in (state.point_inputs, state.mask_inputs):
            for frames in per_object.values():
                frames.clear()
        for bank in (*state.per_obj.values(), *state.temp.values(), state.bank):
            bank.clear()
        state.consolidated.clear()
        state.tracking_has_started = False
        state.frames_tracked.clear()
        state.first_ann_frame_idx = None

    def _obj_index(self, state: TrackingState, obj_id: int) -> int:
        """The object's index; a new id gets the next one (only before tracking starts)."""
        if obj_id in state.obj_ids:
            return state.obj_ids.index(obj_id)
        if state.tracking_has_started:
            raise RuntimeError(
                f"cannot add object id {obj_id} after tracking started (ids: {state.obj_ids}); call reset_state first"
            )
        state.obj_ids.append(obj_id)
        idx = len(state.obj_ids) - 1
        state.point_inputs[idx], state.mask_inputs[idx] = {}, {}
        state.per_obj[idx], state.temp[idx] = MemoryBank(), MemoryBank()
        return idx

    def _limit_points(
        self, frame_idx: int, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.max_point_num_in_prompt_enc
        n = coords.shape[1]
        if limit <= 0 or n <= limit:
            return coords, labels
        first, last = limit // 2, limit - limit // 2
        logger.warning("frame %d: %d points given; the first %d and the last %d are used", frame_idx, n, first, last)
        pick = lambda t: torch.cat([t[:, :first], t[:, -last:]], dim=1)  # noqa: E731
        return pick(coords), pick(labels)

    @staticmethod
    def _check_frame(state: TrackingState, frame_idx: int) -> None:
        if not 0 <= frame_idx < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx} outside the video's {state.num_frames} frames")


def non_overlapping(masks: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) logits: each pixel keeps only its highest object's logit; the others are clamped to <= -10."""
    if masks.shape[0] == 1:
        return masks
    winner = masks.argmax(dim=0, keepdim=True)
    own = torch.arange(masks.shape[0], device=masks.device)[:, None, None, None]
    return torch.where(winner == own, masks, masks.clamp(max=NON_OVERLAP_CLAMP))


def _resize(masks: torch.Tensor, size: tuple[int, int], *, antialias: bool) -> torch.Tensor:
    return F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)


def load_frames(frames: str | Path | torch.Tensor, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A folder of images or a (T, 3, H, W) tensor -> (T, 3, S, S) model input in [-1, 1] and (H, W)."""
    if isinstance(frames, torch.Tensor):
        video = frames
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"a frames tensor must be (T, 3, H, W), got shape {tuple(video.shape)}")
        video = video.float() / 255 if video.dtype == torch.uint8 else video.float()
    else:
        folder = Path(frames)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder of frames")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        arrays = []
        for path in paths:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"{folder}: frames differ in size {sorted(shapes)}")
        video = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    hw = (int(video.shape[-2]), int(video.shape[-1]))
    video = F.interpolate(video, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return (video - 0.5) / 0.5, hw
