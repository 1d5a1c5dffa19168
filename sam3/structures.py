"""Types that cross layers: the clip batch, the (frame, prompt)-pair targets and the model outputs.

DESIGN.md ("The contracts between layers") fixes the rules this module encodes:

* A batch holds B clips. For every clip it holds only the frames *this rank* owns (the data side
  selects them once), each tagged with its global index in the clip, and every prompt of the clip.
* The unit of matching and loss is a (frame, prompt) pair. Pairs are enumerated frame-major: for each
  local frame slot in order, every prompt of that frame's clip. With a constant number of prompts P
  per clip, pair = frame_slot * P + prompt. `PairIndex` maps every pair back to (clip, frame, prompt).
* Model outputs and targets are batched over the same pairs, in the same order.

Shape letters (STYLE.md): B clips, T frames in a clip, F local frame slots on this rank, P prompts of a
clip, Npairs (frame, prompt) pairs, Q queries, N target instances, C channels, H/W spatial,
L text tokens. Boxes are normalised cxcywh in [0, 1] unless the field name says otherwise.

Later issues extend these types (new optional fields); none forks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

_T = TypeVar("_T")


def move_to_device(value: _T, device: torch.device | str, non_blocking: bool = False) -> _T:
    """Returns `value` with every tensor inside it (dataclasses, lists, tuples, dicts) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: move_to_device(getattr(value, f.name), device, non_blocking)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(move_to_device(v, device, non_blocking) for v in value)  # type: ignore[return-value]
    return value


class _Movable:
    """Mixin giving a dataclass a `.to(device)` that moves every tensor it holds."""

    def to(self: _T, device: torch.device | str, non_blocking: bool = False) -> _T:
        return move_to_device(self, device, non_blocking)


@dataclass
class FrameMeta(_Movable):
    """Per-frame metadata of the frames a rank holds.

    Attributes:
        video_ids: length F; the id of the video each local frame comes from.
        orig_sizes: (F, 2) int64; the frame's original (height, width) in pixels, before resizing.
        file_names: length F; the frame's file name relative to the frames root ("" if generated).
    """

    video_ids: list[Any]
    orig_sizes: torch.Tensor
    file_names: list[str] = field(default_factory=list)


@dataclass
class PairIndex(_Movable):
    """Maps every (frame, prompt) pair of a batch back to its clip, frame and prompt.

    All tensors are (Npairs,) int64, in frame-major pair order.

    Attributes:
        clip_idx: index of the pair's clip in the batch, in [0, B).
        frame_slot: index of the pair's frame among the frames this rank holds, in [0, F).
        frame_idx: global index of the pair's frame within its clip, in [0, T).
        prompt_idx: index of the pair's prompt among its clip's prompts, in [0, P_clip).
        text_idx: index of the pair's prompt text in `ClipBatch.texts` (texts are deduplicated
            per batch so the text encoder runs once per distinct phrase).
    """

    clip_idx: torch.Tensor
    frame_slot: torch.Tensor
    frame_idx: torch.Tensor
    prompt_idx: torch.Tensor
    text_idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.clip_idx.numel())

    @staticmethod
    def frame_major(
        frame_clip_idx: torch.Tensor,
        frame_indices: torch.Tensor,
        clip_prompt_text_idx: list[list[int]],
    ) -> PairIndex:
        """Enumerates pairs frame-major: every local frame, then every prompt of that frame's clip.

        Args:
            frame_clip_idx: (F,) clip of each local frame slot.
            frame_indices: (F,) global frame index of each local frame slot.
            clip_prompt_text_idx: per clip, the index into the batch's texts of each of its prompts.
        """
        clip_idx, frame_slot, frame_idx, prompt_idx, text_idx = [], [], [], [], []
        for slot, (clip, t) in enumerate(zip(frame_clip_idx.tolist(), frame_indices.tolist(), strict=True)):
            for p, text in enumerate(clip_prompt_text_idx[clip]):
                clip_idx.append(clip)
                frame_slot.append(slot)
                frame_idx.append(t)
                prompt_idx.append(p)
                text_idx.append(text)

        def as_long(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)

        return PairIndex(
            clip_idx=as_long(clip_idx),
            frame_slot=as_long(frame_slot),
            frame_idx=as_long(frame_idx),
            prompt_idx=as_long(prompt_idx),
            text_idx=as_long(text_idx),
        )


@dataclass
class PairTargets(_Movable):
    """Ground truth batched over (frame, prompt) pairs: boxes and flags padded per pair, masks packed.

    Every instance (masklet) of a prompt keeps its slot across the frames of a clip; in a frame where
    it is not visible it stays as a placeholder (`is_visible` False, zero box, no mask stored). Slots past
    a pair's `num_instances` are padding (`object_ids` -1). Only visible instances may be matched.

    Attributes:
        pairs: the pair index shared with the batch.
        boxes_padded: (Npairs, Nmax, 4) float32, normalised cxcywh; zeros for placeholders and padding.
        is_visible_padded: (Npairs, Nmax) bool; True where the instance is visible in the pair's frame.
        object_ids_padded: (Npairs, Nmax) int64; track id of the instance within its clip, -1 = padding.
        num_boxes: (Npairs,) int64; number of visible instances of the pair (what the loss counts).
        num_instances: (Npairs,) int64; number of instance slots (visible or not) of the pair.
        is_exhaustive: (Npairs,) bool; all instances of the prompt are annotated, so unmatched queries
            may be supervised as negatives.
        is_positive: (Npairs,) bool; the prompt has at least one masklet in the clip (False for a
            negative prompt, whose pairs have no instances).
        masks: the masks of the visible instances at the model's input resolution, packed in the
            order of `packed_pair_idx` (pair, then slot) and stored one bit per pixel (`BitMasks`), or
            None when the dataset carries no masks. Placeholders and padding, always empty, are not
            stored: `mask_rows` maps a visible (pair, slot) to its row.
        clip_keys: (B,) int64 in [0, 2^31), indexed by `pairs.clip_idx`; a key of each clip's
            identity (its dataset key), the same on every rank, that seeds per-pair randomness such as
            mask point sampling. None: the clip's index in the batch stands in.
    """

    pairs: PairIndex
    boxes_padded: torch.Tensor
    is_visible_padded: torch.Tensor
    object_ids_padded: torch.Tensor
    num_boxes: torch.Tensor
    num_instances: torch.Tensor
    is_exhaustive: torch.Tensor
    is_positive: torch.Tensor
    masks: BitMasks | None = None
    clip_keys: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.num_boxes.numel())

    def pair_clip_keys(self) -> torch.Tensor:
        """(Npairs,) int64: the clip key of every pair (see `clip_keys`)."""
        if self.clip_keys is None:
            return self.pairs.clip_idx
        return self.clip_keys[self.pairs.clip_idx]

    @property
    def total_boxes(self) -> int:
        """Number of visible boxes in this batch (the local share of the loss normaliser N)."""
        return int(self.num_boxes.sum())

    @property
    def packed_pair_idx(self) -> torch.Tensor:
        """(Nvis,) int64: the pair of each visible instance, in pair order then slot order."""
        return self.is_visible_padded.nonzero(as_tuple=True)[0]

    @property
    def packed_boxes(self) -> torch.Tensor:
        """(Nvis, 4) float32: boxes of the visible instances, normalised cxcywh, packed."""
        return self.boxes_padded[self.is_visible_padded]

    @property
    def packed_object_ids(self) -> torch.Tensor:
        """(Nvis,) int64: track ids of the visible instances, packed."""
        return self.object_ids_padded[self.is_visible_padded]

    @property
    def packed_masks(self) -> torch.Tensor | None:
        """(Nvis, H, W) bool: masks of the visible instances, packed; None without masks."""
        return None if self.masks is None else self.masks.unpack()

    def mask_rows(self, pair_idx: torch.Tensor, slot_idx: torch.Tensor) -> torch.Tensor:
        """(M,) int64: the row of `masks` of visible instances (`pair_idx`, `slot_idx`), both (M,) int64.

        Rows are counted on the device (a cumulative sum over the visibility mask, no host sync); an
        invisible slot has no row, and asking for one is a caller's error that this does not check.
        """
        num_slots = self.is_visible_padded.shape[1]
        rows = self.is_visible_padded.reshape(-1).cumsum(0) - 1  # (Npairs * Nmax,)
        return rows[pair_idx * num_slots + slot_idx]


@dataclass
class BitMasks(_Movable):
    """K boolean masks of one size, stored one bit per pixel (8x less memory than bool).

    Pixel i = y * W + x of mask k is bit i % 8 (least significant first) of `bits[k, i // 8]`; the
    bits past H * W in a mask's last byte are 0.

    Attributes:
        bits: (K, ceil(H * W / 8)) uint8.
        height: H.
        width: W.
    """

    bits: torch.Tensor
    height: int
    width: int

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    @staticmethod
    def pack(masks: torch.Tensor) -> BitMasks:
        """Packs (K, H, W) bool masks (on the CPU with numpy's `packbits`, 20x faster than tensor ops)."""
        num, height, width = masks.shape
        flat = masks.reshape(num, height * width)
        if flat.device.type == "cpu":
            bits = torch.from_numpy(np.packbits(flat.numpy(), axis=1, bitorder="little"))
        else:
            bits = _pack_bits_tensor(flat)
        return BitMasks(bits=bits, height=height, width=width)

    def unpack(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(M, H, W) bool: masks `rows` ((M,) int64), or all K masks when `rows` is None."""
        bits = self.bits if rows is None else self.bits[rows]
        shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
        flat = (bits.unsqueeze(-1) >> shifts).bitwise_and_(1).bool().reshape(len(bits), bits.shape[1] * 8)
        return flat[:, : self.height * self.width].reshape(len(bits), self.height, self.width)


@dataclass
class ClipBatch(_Movable):
    """The frames of B clips that this rank holds, their prompts and (in training) their targets.

    Attributes:
        images: (F, 3, H, W) float32, normalised model input of the local frames, grouped by clip and
            ordered by global frame index within a clip.
        frame_clip_idx: (F,) int64; the clip of each local frame, in [0, B).
        frame_indices: (F,) int64; the global index of each local frame within its clip, in [0, T).
        num_frames: (B,) int64; the clip length T of each clip (all of its frames, on every rank).
        prompts: per clip, its text prompts (noun phrases); P_clip = len(prompts[clip]).
        texts: the distinct prompt texts of the batch, the text encoder's input.
        pairs: the (frame, prompt) pairs of the batch, frame-major.
        meta: per-frame metadata of the local frames.
        targets: ground truth over the same pairs, or None at inference.
        clip_ids: per clip, an identifier of the sample (dataset index), for logging and resuming.
    """

    images: torch.Tensor
    frame_clip_idx: torch.Tensor
    frame_indices: torch.Tensor
    num_frames: torch.Tensor
    prompts: list[list[str]]
    texts: list[str]
    pairs: PairIndex
    meta: FrameMeta
    targets: PairTargets | None = None
    clip_ids: list[Any] = field(default_factory=list)

    @property
    def num_clips(self) -> int:
        return int(self.num_frames.numel())

    @property
    def num_local_frames(self) -> int:
        return int(self.frame_indices.numel())

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @staticmethod
    def dedup_texts(prompts: list[list[str]]) -> tuple[list[str], list[list[int]]]:
        """Returns the distinct texts of `prompts` (first-seen order) and each prompt's index into them."""
        texts: list[str] = []
        position: dict[str, int] = {}
        clip_text_idx = []
        for clip_prompts in prompts:
            idx = []
            for text in clip_prompts:
                if text not in position:
                    position[text] = len(texts)
                    texts.append(text)
                idx.append(position[text])
            clip_text_idx.append(idx)
        return texts, clip_text_idx


@dataclass
class DetectorOutput(_Movable):
    """Grounding outputs batched over (frame, prompt) pairs, in the batch's pair order.

    Attributes:
        pred_logits: (Npairs, Q, 1) float; per-query class logits, presence not included (the detection
            score is sigmoid(pred_logits) * sigmoid(presence_logit_dec)).
        pred_boxes: (Npairs, Q, 4) float; normalised cxcywh in [0, 1].
        pred_boxes_xyxy: (Npairs, Q, 4) float; the same boxes as normalised xyxy.
        presence_logit_dec: (Npairs, 1) float; logit that the prompt is present in the frame.
        pred_masks: (Npairs, Q, h, w) float mask logits (h = w = 288 at 1008 px input), or None when
            segmentation is disabled.
        queries: (Npairs, Q, C) float; the last decoder layer's query embeddings, or None.
        aux_outputs: one output per earlier decoder layer (same fields, no nesting), for auxiliary losses.
        o2m: the one-to-many query branch (the `*_o2m` outputs), only in training, or None.
        semantic_seg: (Npairs, 1, h, w) float semantic-segmentation logits, or None.
    """

    pred_logits: torch.Tensor
    pred_boxes: torch.Tensor
    pred_boxes_xyxy: torch.Tensor
    presence_logit_dec: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    aux_outputs: list[DetectorOutput] = field(default_factory=list)
    o2m: DetectorOutput | None = None
    semantic_seg: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.pred_logits.shape[0])

    @property
    def num_queries(self) -> int:
        return int(self.pred_logits.shape[1])

    def scores(self) -> torch.Tensor:
        """(Npairs, Q) detection scores in [0, 1]: sigmoid(logit) * sigmoid(presence) when present."""
        scores = self.pred_logits.squeeze(-1).sigmoid()
        if self.presence_logit_dec is not None:
            scores = scores * self.presence_logit_dec.sigmoid()
        return scores


def _pack_bits_tensor(flat: torch.Tensor) -> torch.Tensor:
    """(K, P) bool -> (K, ceil(P / 8)) uint8 with tensor ops on any device (`BitMasks` bit order)."""
    num, length = flat.shape
    pad = -length % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(num, pad)], dim=1)
    octets = flat.reshape(num, flat.shape[1] // 8, 8)  # (K, ceil(P / 8), 8)
    bits = octets[..., 0].to(torch.uint8)
    for j in range(1, 8):
        bits |= octets[..., j].to(torch.uint8) << j
    return bits
