"""One clip as the dataset returns it, and the collate function that batches clips into a `ClipBatch`.

A dataset asked to report bad samples (`on_bad_sample="report"`) returns a `BadClip` instead of
raising; a batch holding one collates to a `BadBatch`, which the trainer discards on every rank
(`data.max_bad_samples`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from sam3.data.index import DataError
from sam3.structures import BitMasks, ClipBatch, FrameMeta, PairIndex, PairTargets


@dataclass
class ClipSample:
    """The frames of one clip held by this rank, with every prompt of the clip and its instances.

    N counts the clip's instances over all prompts; `prompt_instances` says which belong to which prompt.
    An instance keeps its index on every frame; where it is not visible its box is zero, its mask empty.

    Attributes:
        images: (F, 3, S, S) float32 normalised local frames, ascending global frame index.
        frame_indices: (F,) int64 global index of each local frame in the clip.
        num_frames: T, frames in the whole clip.
        prompts: P phrases.
        prompt_instances: per prompt, its instance indices in [0, N).
        is_exhaustive: (P,) per prompt.
        is_positive: (P,) per prompt: one of its instances is visible somewhere in the clip.
        boxes_cxcywh: (F, N, 4) float32 normalised boxes, zeros where not visible.
        is_visible: (F, N) bool.
        masks: (F, N, S, S) bool, or None for a box-only dataset.
        video_id: the source video's id.
        orig_size: (H, W) of the source frames.
        file_names: (F,) frame files relative to the frames root.
        clip_id: the dataset key of the clip (epoch, index).
    """

    images: torch.Tensor
    frame_indices: torch.Tensor
    num_frames: int
    prompts: list[str]
    prompt_instances: list[list[int]]
    is_exhaustive: list[bool]
    is_positive: list[bool]
    boxes_cxcywh: torch.Tensor
    is_visible: torch.Tensor
    masks: torch.Tensor | None
    video_id: Any
    orig_size: tuple[int, int]
    file_names: list[str]
    clip_id: Any = None


@dataclass(frozen=True)
class BadClip:
    """A clip this rank could not load: the `DataError`'s parts (picklable, unlike the exception).

    Attributes:
        clip_id: the dataset key of the clip (epoch, index).
        video_id: the source video's id.
        path: the annotation file.
        record: "video V frame F" (or with the annotation).
        field_name: the field at fault.
        problem: what is wrong, naming the frame file where there is one.
    """

    clip_id: Any
    video_id: Any
    path: str
    record: str | None
    field_name: str | None
    problem: str

    @classmethod
    def from_error(cls, error: DataError, clip_id: Any, video_id: Any) -> BadClip:
        return cls(clip_id, video_id, error.path, error.record, error.field_name, error.problem)

    def error(self) -> DataError:
        return DataError(self.path, self.record, self.field_name, self.problem)


@dataclass(frozen=True)
class BadBatch:
    """A batch in which some clips could not be loaded; the whole batch is discarded.

    Attributes:
        bad_clips: the clips that failed.
        num_clips: clips of the batch, good and bad (they all advance the sampler position).
    """

    bad_clips: list[BadClip]
    num_clips: int


def collate_clips(samples: list[ClipSample | BadClip]) -> ClipBatch | BadBatch:
    """Batches clips: local frames concatenated clip by clip, targets padded per (frame, prompt) pair
    except the masks, packed over the visible instances one bit per pixel (`PairTargets.masks`).

    Works when some or all clips have no local frame (T < F): the batch then has fewer (or zero) frames
    and pairs but keeps every clip's prompts and `num_frames`. A batch with a `BadClip` is a `BadBatch`.
    """
    if not samples:
        raise ValueError("collate_clips needs at least one clip")
    bad = [s for s in samples if isinstance(s, BadClip)]
    if bad:
        return BadBatch(bad_clips=bad, num_clips=len(samples))
    has_masks = samples[0].masks is not None
    if any((s.masks is not None) != has_masks for s in samples):
        raise ValueError("cannot batch clips with masks together with box-only clips")
    size = samples[0].images.shape[-1]
    images = torch.cat([s.images for s in samples])  # (F, 3, S, S)
    frame_clip_idx = torch.cat(
        [torch.full((len(s.frame_indices),), c, dtype=torch.int64) for c, s in enumerate(samples)]
    )
    frame_indices = torch.cat([s.frame_indices.to(torch.int64) for s in samples])
    prompts = [list(s.prompts) for s in samples]
    texts, clip_text_idx = ClipBatch.dedup_texts(prompts)
    pairs = PairIndex.frame_major(frame_clip_idx, frame_indices, clip_text_idx)

    num_pairs = len(pairs)
    max_inst = max((len(inst) for s in samples if len(s.frame_indices) for inst in s.prompt_instances), default=0)
    boxes, visible, object_ids = [], [], []
    masks: list[torch.Tensor] = []  # per clip, (bit-packed) masks of its visible (pair, slot)s
    num_instances, is_exhaustive, is_positive = [], [], []
    for s in samples:
        num_local, num_prompts = len(s.frame_indices), len(s.prompts)
        if num_local == 0:
            continue
        inst_idx = torch.full((num_prompts, max_inst), -1, dtype=torch.int64)  # (P, Nmax), -1 = padding
        for p, inst in enumerate(s.prompt_instances):
            inst_idx[p, : len(inst)] = torch.tensor(inst, dtype=torch.int64)
        valid = inst_idx >= 0
        safe = inst_idx.clamp(min=0)
        has_inst = s.is_visible.shape[1] > 0  # gathering from an empty instance axis is undefined
        clip_visible = s.is_visible[:, safe] & valid if has_inst else valid.expand(num_local, -1, -1)
        clip_boxes = s.boxes_cxcywh[:, safe] if has_inst else torch.zeros(num_local, num_prompts, max_inst, 4)
        local_pairs = num_local * num_prompts  # explicit: Nmax may be 0 (every prompt a negative)
        boxes.append((clip_boxes * clip_visible[..., None]).reshape(local_pairs, max_inst, 4))
        visible.append(clip_visible.reshape(local_pairs, max_inst))
        object_ids.append(inst_idx.expand(num_local, -1, -1).reshape(local_pairs, max_inst))
        if has_masks:
            masks.append(_visible_mask_bits(s.masks, safe, clip_visible))
        lengths = torch.tensor([len(inst) for inst in s.prompt_instances], dtype=torch.int64)
        num_instances.append(lengths.repeat(num_local))
        is_exhaustive.append(torch.tensor(s.is_exhaustive, dtype=torch.bool).repeat(num_local))
        is_positive.append(torch.tensor(s.is_positive, dtype=torch.bool).repeat(num_local))

    def cat(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
        return torch.cat(parts) if parts else empty

    boxes_padded = cat(boxes, torch.zeros(0, max_inst, 4))
    visible_padded = cat(visible, torch.zeros(0, max_inst, dtype=torch.bool))
    assert len(boxes_padded) == num_pairs, f"built {len(boxes_padded)} pairs but the pair index has {num_pairs}"
    targets = PairTargets(
        pairs=pairs,
        boxes_padded=boxes_padded,
        is_visible_padded=visible_padded,
        object_ids_padded=cat(object_ids, torch.zeros(0, max_inst, dtype=torch.int64)),
        num_boxes=visible_padded.sum(dim=1),
        num_instances=cat(num_instances, torch.zeros(0, dtype=torch.int64)),
        is_exhaustive=cat(is_exhaustive, torch.zeros(0, dtype=torch.bool)),
        is_positive=cat(is_positive, torch.zeros(0, dtype=torch.bool)),
        masks=BitMasks(cat(masks, torch.zeros(0, -(-size * size // 8), dtype=torch.uint8)), size, size)
        if has_masks
        else None,
        clip_keys=torch.tensor([clip_key(s.clip_id) for s in samples], dtype=torch.int64),
    )
    meta = FrameMeta(
        video_ids=[s.video_id for s in samples for _ in range(len(s.frame_indices))],
        orig_sizes=torch.tensor(
            [s.orig_size for s in samples for _ in range(len(s.frame_indices))], dtype=torch.int64
        ).reshape(-1, 2),
        file_names=[name for s in samples for name in s.file_names],
    )
    return ClipBatch(
        images=images,
        frame_clip_idx=frame_clip_idx,
        frame_indices=frame_indices,
        num_frames=torch.tensor([s.num_frames for s in samples], dtype=torch.int64),
        prompts=prompts,
        texts=texts,
        pairs=pairs,
        meta=meta,
        targets=targets,
        clip_ids=[s.clip_id for s in samples],
    )


def clip_key(clip_id: Any) -> int:
    """A key in [0, 2^31) of a clip's dataset key, the same in every process (unlike `hash`)."""
    return zlib.crc32(repr(clip_id).encode()) & 0x7FFFFFFF


def _visible_mask_bits(masks: torch.Tensor, inst_idx: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(Nvis, ceil(S S / 8)) uint8: the bit-packed masks of a clip's visible (frame, prompt, slot)s.

    Args:
        masks: (F, N, S, S) bool masks of the clip's instances on its local frames.
        inst_idx: (P, Nmax) instance of each prompt slot (any valid instance where `visible` is False).
        visible: (F, P, Nmax) bool; rows come out in its (frame, prompt, slot) order, the pair order.
    """
    num_local, num_inst, size = masks.shape[0], masks.shape[1], masks.shape[-1]
    rows = torch.arange(num_local)[:, None, None] * num_inst + inst_idx  # (F, P, Nmax) into the F * N masks
    picked = masks.reshape(-1, size, size)[rows[visible]]  # (Nvis, S, S) bool
    return BitMasks.pack(picked).bits
