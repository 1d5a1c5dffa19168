"""SAM3's tracker (SAM3 paper, "Tracker"; SAM2's architecture): the interactive heads (prompt encoder and
mask decoder that segment one object from clicks, boxes and a previous mask) and the memory that carries
objects through a video (memory encoder, memory attention, object pointers). Parameter names equal the
released `tracker.*` names without the prefix.

Image features come from the detector's own trunk through the neck's `sam2_convs` pyramid (levels at
4x, 2x and 1x the token grid). This module holds the per-frame operations; which frames feed the memory
and how user inputs are consolidated is the session's job (`sam3.tracking`).

Frame-by-frame rules (all from the released model's inference):
- A frame without memory (an object's first frame) uses its 1x level + `no_mem_embed`.
- Otherwise the 1x level attends to the memory bank: up to `max_cond_frames_in_attn` conditioning
  frames (closest first) and the `num_maskmem - 1` frames before it (after it, in reverse), each a
  (mem_dim, h, w) map + its sine encoding + a learned temporal encoding, then up to
  `max_obj_ptrs_in_encoder` object pointers, each split into d_model / mem_dim tokens with a sine
  encoding of its temporal distance (pointer tokens get no RoPE).
- A frame whose object score logit is <= 0 outputs `NO_OBJ_SCORE` masks and the `no_obj_ptr` pointer,
  and its memory gets `no_obj_embed_spatial`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from sam3.model.mask_decoder import DecodedMasks, MaskDecoder
from sam3.model.memory_attention import MemoryAttention
from sam3.model.memory_encoder import MemoryEncoder
from sam3.model.mlp import MLP
from sam3.model.prompt_encoder import PromptEncoder

NO_OBJ_SCORE = -1024.0  # mask logit of an absent object
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0  # binary mask -> logits (also the memory input scale)
POINTER_TPOS_TEMPERATURE = 10000.0


@dataclass
class InteractiveFeatures:
    """Per-image inputs of the mask decoder.

    Attributes:
        image_embed: (B, C, h, w) 1x level + `no_mem_embed`.
        high_res_feats: (B, C/8, 4h, 4w) `conv_s0`(4x level) and (B, C/4, 2h, 2w) `conv_s1`(2x level).
    """

    image_embed: torch.Tensor
    high_res_feats: tuple[torch.Tensor, torch.Tensor]

    def select(self, idx: int) -> InteractiveFeatures:
        """The features of image `idx`, batch dim kept (1, ...)."""
        return InteractiveFeatures(
            self.image_embed[idx : idx + 1], tuple(f[idx : idx + 1] for f in self.high_res_feats)
        )


@dataclass
class InteractiveOutput:
    """One decoder run for B prompt sets on one image.

    Attributes:
        sparse: (B, N + 1, C) prompt tokens; dense: (B, C, h, w) dense prompt embedding.
        decoded: all four mask tokens' outputs.
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    decoded: DecodedMasks


@dataclass
class TrackerFrameFeatures:
    """One frame's tracker inputs (batch 1, or B after `expand`).

    Attributes:
        pix: (B, C, h, w) the 1x level of the second pyramid (no `no_mem_embed`).
        pos: (B, C, h, w) its sine position encoding.
        high_res: (B, C/8, 4h, 4w) `conv_s0`(4x level) and (B, C/4, 2h, 2w) `conv_s1`(2x level).
    """

    pix: torch.Tensor
    pos: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]

    def expand(self, batch: int) -> TrackerFrameFeatures:
        """The same frame for `batch` objects (views, no copy)."""
        grow = lambda t: t.expand(batch, -1, -1, -1)  # noqa: E731
        return TrackerFrameFeatures(grow(self.pix), grow(self.pos), (grow(self.high_res[0]), grow(self.high_res[1])))

    def to(self, device: torch.device | str) -> TrackerFrameFeatures:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return TrackerFrameFeatures(move(self.pix), move(self.pos), (move(self.high_res[0]), move(self.high_res[1])))


@dataclass
class HeadsOutput:
    """The SAM heads' result for B objects on one frame, after object gating and mask choice.

    Attributes:
        low_res_masks: (B, 1, 4h, 4w) chosen mask logits (`NO_OBJ_SCORE` where the object is absent).
        high_res_masks: (B, 1, S, S) the same upsampled to the model input size S.
        ious: (B, K) predicted IoU of the K returned candidates (K = 3 multimask, else 1).
        obj_ptr: (B, C) object pointer (`no_obj_ptr` where the object is absent).
        object_score_logits: (B, 1).
    """

    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    ious: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor


@dataclass
class FrameOutput:
    """What a tracked (or interacted) frame keeps for B objects, the memory bank's unit.

    Attributes:
        pred_masks: (B, 1, 4h, 4w) low-res logits; None after `add_new_mask` until consolidated.
        obj_ptr: (B, C) object pointers.
        object_score_logits: (B, 1).
        maskmem_features: (B, mem_dim, h, w) bfloat16 memory, None until encoded.
        iou_score: (B,) best predicted IoU (memory selection only).
        eff_iou_score: () memory-selection score of the frame (tracked frames only).
        video_res_masks: (B, 1, H, W) logits at video size, set by `add_new_mask` (+-1024).
    """

    pred_masks: torch.Tensor | None
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor
    maskmem_features: torch.Tensor | None = None
    iou_score: torch.Tensor | None = None
    eff_iou_score: torch.Tensor | None = None
    video_res_masks: torch.Tensor | None = None

    def select(self, index: slice | list[int]) -> FrameOutput:
        """The outputs of some objects (views for a slice)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(
            self,
            pred_masks=pick(self.pred_masks),
            obj_ptr=pick(self.obj_ptr),
            object_score_logits=pick(self.object_score_logits),
            maskmem_features=pick(self.maskmem_features),
            iou_score=pick(self.iou_score),
            video_res_masks=pick(self.video_res_masks),
        )


@dataclass
class MemoryBank:
    """Frame outputs by frame index, conditioning (user-prompted) frames apart from tracked ones."""

    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)

    def get(self, frame_idx: int) -> FrameOutput | None:
        return self.cond.get(frame_idx, self.non_cond.get(frame_idx))

    def clear(self) -> None:
        self.cond.clear()
        self.non_cond.clear()


class Tracker(nn.Module):
    """SAM heads + memory on the detector's second feature pyramid.

    Args:
        d_model: width C of the heads (the neck's width).
        sam_prompt_encoder: points / boxes / mask -> prompt embeddings.
        sam_mask_decoder: prompt embeddings + image features -> masks, IoU, object score.
        maskmem_backbone: (1x level, mask) -> (mem_dim, h, w) memory and its position encoding.
        memory_attention: conditions the 1x level on the memory bank (registered as `transformer.encoder`).
        num_maskmem: memories per frame: 1 conditioning slot + the `num_maskmem - 1` previous frames.
        max_cond_frames_in_attn: conditioning frames attended at most (closest first); -1 all.
        max_obj_ptrs_in_encoder: object pointers attended at most.
        multimask_min_pt_num, multimask_max_pt_num: point counts (a box counts 2) that give 3 candidates.
        multimask_output_for_tracking: also give 3 candidates on tracked frames (not only on first clicks).
        use_memory_selection: keep a tracked frame in the memory only if its score exceeds `mf_threshold`.
        mf_threshold: memory-selection threshold on mean(2 sigmoid(object score) - 1) x mean(IoU).
    """

    def __init__(
        self,
        *,
        d_model: int,
        sam_prompt_encoder: PromptEncoder,
        sam_mask_decoder: MaskDecoder,
        maskmem_backbone: MemoryEncoder,
        memory_attention: MemoryAttention,
        num_maskmem: int = 7,
        max_cond_frames_in_attn: int = 4,
        max_obj_ptrs_in_encoder: int = 16,
        multimask_min_pt_num: int = 0,
        multimask_max_pt_num: int = 1,
        multimask_output_for_tracking: bool = True,
        use_memory_selection: bool = False,
        mf_threshold: float = 0.01,
    ) -> None:
        super().__init__()
        if sam_prompt_encoder.d_model != d_model:
            raise ValueError(f"prompt encoder width {sam_prompt_encoder.d_model} != tracker d_model {d_model}")
        mem_dim = maskmem_backbone.out_proj.out_channels
        if d_model % mem_dim:
            raise ValueError(f"tracker d_model {d_model} must be a multiple of the memory width {mem_dim}")
        if max_cond_frames_in_attn != -1 and max_cond_frames_in_attn < 2:
            raise ValueError(f"max_cond_frames_in_attn must be -1 or >= 2, got {max_cond_frames_in_attn}")
        self.d_model = d_model
        self.mem_dim = mem_dim
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.maskmem_backbone = maskmem_backbone
        self.transformer = nn.ModuleDict({"encoder": memory_attention})
        self.num_maskmem = num_maskmem
        self.max_cond_frames_in_attn = max_cond_frames_in_attn
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.use_memory_selection = use_memory_selection
        self.mf_threshold = mf_threshold

        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d_model))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d_model))  # released; unused at inference
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d_model))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        for p in (
            self.no_mem_embed,
            self.no_mem_pos_enc,
            self.maskmem_tpos_enc,
            self.no_obj_ptr,
            self.no_obj_embed_spatial,
        ):
            nn.init.trunc_normal_(p, std=0.02)
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)  # input mask -> prompt-encoder size
        self.obj_ptr_proj = MLP(input_dim=d_model, hidden_dim=d_model, output_dim=d_model, num_layers=3)
        self.obj_ptr_tpos_proj = nn.Linear(d_model, mem_dim)

    @property
    def memory_attention(self) -> MemoryAttention:
        return self.transformer["encoder"]

    @property
    def image_size(self) -> int:
        """Side S of the square model input; point coordinates are pixels of it."""
        return self.sam_prompt_encoder.image_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (4x the token grid)."""
        return self.sam_prompt_encoder.mask_input_size

    @property
    def input_mask_size(self) -> int:
        """Side to which mask prompts are resized (4x the low-res side)."""
        return 4 * self.low_res_size

    # ------------------------------------------------------------------ images
    def image_features(self, sam2_fpn: list[torch.Tensor]) -> InteractiveFeatures:
        """(B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w) levels of `sam2_convs` -> decoder inputs."""
        if len(sam2_fpn) < 3:
            raise ValueError(f"the interactive heads need 3 sam2 pyramid levels (4x, 2x, 1x), got {len(sam2_fpn)}")
        decoder = self.sam_mask_decoder
        image_embed = sam2_fpn[2] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return InteractiveFeatures(image_embed, (decoder.conv_s0(sam2_fpn[0]), decoder.conv_s1(sam2_fpn[1])))

    def frame_features(self, sam2_fpn: list[torch.Tensor], sam2_pos: list[torch.Tensor]) -> TrackerFrameFeatures:
        """The second pyramid's levels 0-2 and their encodings -> the tracker's per-frame inputs."""
        if len(sam2_fpn) < 3 or len(sam2_pos) < 3:
            raise ValueError(f"the tracker needs 3 sam2 pyramid levels (4x, 2x, 1x), got {len(sam2_fpn)}")
        decoder = self.sam_mask_decoder
        return TrackerFrameFeatures(
            sam2_fpn[2], sam2_pos[2], (decoder.conv_s0(sam2_fpn[0]), decoder.conv_s1(sam2_fpn[1]))
        )

    def forward(
        self,
        features: InteractiveFeatures,
        points_xy: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> InteractiveOutput:
        """Segment B prompt sets on one image (no memory).

        Args:
            features: one image's features (batch 1).
            points_xy: (B, N, 2) pixel coordinates of the model input, boxes first as corners 2 / 3.
            point_labels: (B, N) int labels in {-1, 0, 1, 2, 3}.
            mask_input: optional (B, 1, 4h, 4w) low-res logits of a previous round.

        Returns:
            prompt embeddings and all four masks (B, 4, 4h, 4w) with IoU and object score.
        """
        sparse, dense = self.sam_prompt_encoder(points_xy, point_labels, mask_input)
        decoded = self.sam_mask_decoder(
            features.image_embed, self.sam_prompt_encoder.get_dense_pe(), sparse, dense, features.high_res_feats
        )
        return InteractiveOutput(sparse=sparse, dense=dense, decoded=decoded)

    # ------------------------------------------------------------------ heads
    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        """Three candidates for 0-1 clicks (first frame, or any frame with `multimask_output_for_tracking`)."""
        return (is_init_cond_frame or self.multimask_output_for_tracking) and (
            self.multimask_min_pt_num <= num_points <= self.multimask_max_pt_num
        )

    def run_heads(
        self,
        pix: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        points_xy: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> HeadsOutput:
        """Prompt encoder + mask decoder on B objects, with object gating and the pointer.

        Args:
            pix: (B, C, h, w) memory-conditioned (or `no_mem_embed`-added) 1x features.
            high_res: the frame's (B, ...) `conv_s0` / `conv_s1` features.
            points_xy: (B, N, 2) model-input pixels; None gives one padding point.
            point_labels: (B, N).
            mask_input: (B, 1, m, m) logits; resized (antialias) to the prompt encoder's size if needed.
            multimask_output: return 3 candidates and choose the best by predicted IoU.
        """
        batch = pix.shape[0]
        if points_xy is None:  # one padding point (label -1) stands for "no clicks"
            points_xy = pix.new_zeros(batch, 1, 2)
            point_labels = torch.full((batch, 1), -1, dtype=torch.int64, device=pix.device)
        if mask_input is not None and mask_input.shape[-1] != self.low_res_size:
            size = (self.low_res_size, self.low_res_size)
            mask_input = F.interpolate(
                mask_input.float(), size=size, mode="bilinear", align_corners=False, antialias=True
            )
        sparse, dense = self.sam_prompt_encoder(points_xy, point_labels, mask_input)
        decoded = self.sam_mask_decoder(pix, self.sam_prompt_encoder.get_dense_pe(), sparse, dense, high_res)
        present = decoded.object_score_logits > 0  # B, 1
        masks, ious = self.sam_mask_decoder.select(decoded, multimask_output)
        rows = torch.arange(batch, device=pix.device)
        if multimask_output:
            best = ious.argmax(dim=-1)
            low_res = masks[rows, best][:, None]
            token = decoded.mask_tokens[rows, best + 1]
        else:
            low_res = masks
            token = decoded.mask_tokens[:, 0]  # the pointer's token even where the mask fell back
        low_res = torch.where(present[..., None, None], low_res, NO_OBJ_SCORE).float()
        high_res_masks = F.interpolate(low_res, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        obj_ptr = torch.where(present, self.obj_ptr_proj(token), self.no_obj_ptr)
        return HeadsOutput(low_res, high_res_masks, ious, obj_ptr, decoded.object_score_logits)

    def mask_as_output(
        self, pix: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], masks: torch.Tensor
    ) -> HeadsOutput:
        """A mask prompt taken as the output: logits +-10, IoU 1, object score +-10 (empty mask: absent),
        and a pointer from the heads run on the downsampled mask.

        Args:
            pix: (B, C, h, w) raw 1x features; masks: (B, 1, M, M) in [0, 1], M = `input_mask_size`.
        """
        masks = masks.float()
        high_res_masks = masks * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        low_res = F.interpolate(high_res_masks, size=(self.low_res_size,) * 2, mode="bilinear", antialias=True)
        heads = self.run_heads(pix, high_res, mask_input=self.mask_downsample(masks))
        present = (masks.flatten(1) > 0).any(dim=1, keepdim=True)  # B, 1
        score = present.float() * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        obj_ptr = torch.where(present, heads.obj_ptr, self.no_obj_ptr)
        return HeadsOutput(low_res, high_res_masks, masks.new_ones(masks.shape[0], 1), obj_ptr, score)

    # ------------------------------------------------------------------ memory
    def encode_memory(
        self, pix: torch.Tensor, high_res_masks: torch.Tensor, object_score_logits: torch.Tensor, binarize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a frame's masks into memory.

        Args:
            pix: (B, C, h, w) raw 1x features.
            high_res_masks: (B, 1, S, S) logits at the model input size.
            object_score_logits: (B, 1); absent objects get `no_obj_embed_spatial`.
            binarize: threshold the logits (frames the user prompted) instead of a sigmoid.

        Returns:
            (B, mem_dim, h, w) float memory (callers store it in bfloat16) and its (B, mem_dim, h, w) encoding.
        """
        probs = (high_res_masks > 0).float() if binarize else high_res_masks.sigmoid()
        features, pos = self.maskmem_backbone(pix, probs * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS)
        absent = (object_score_logits <= 0).float()[..., None, None]  # B, 1, 1, 1
        features = features + absent * self.no_obj_embed_spatial[..., None, None]
        return features, pos

    def memory_score(self, object_score_logits: torch.Tensor, iou_score: torch.Tensor) -> torch.Tensor:
        """Memory-selection score of a frame: mean over objects of (2 sigmoid(s) - 1, 0 if s <= 0) times
        the mean best IoU. (B, 1), (B,) -> ()."""
        norm = torch.where(object_score_logits > 0, object_score_logits.sigmoid() * 2 - 1, 0.0)
        return (norm * iou_score).mean()

    def pointer_tpos(self, distances: list[int], max_distance: int, device: torch.device) -> torch.Tensor:
        """Temporal encoding of pointers: sine of distance / (max_distance - 1), projected. -> (P, mem_dim)."""
        x = torch.tensor(distances, dtype=torch.float32, device=device) / max(max_distance - 1, 1)
        return self.obj_ptr_tpos_proj(sine_1d(x, self.d_model))

    def condition_on_memory(
        self,
        frame_idx: int,
        features: TrackerFrameFeatures,
        bank: MemoryBank,
        memory_pos: torch.Tensor | None,
        num_frames: int,
        reverse: bool,
    ) -> torch.Tensor:
        """The frame's 1x features attended to its memory bank -> (B, C, h, w).

        Args:
            features: the frame's features for B objects.
            bank: the B objects' outputs of other frames (at least one conditioning frame).
            memory_pos: (1 or B, mem_dim, h, w) the memories' sine encoding.
            num_frames: video length (bounds the pointer window).
            reverse: tracking backwards in time.
        """
        batch, channels, h, w = features.pix.shape
        sign = -1 if reverse else 1
        selected, unselected = closest_cond_frames(frame_idx, bank.cond, self.max_cond_frames_in_attn)
        valid = self._selected_frames(bank, frame_idx, num_frames, reverse) if self.use_memory_selection else None

        memories: list[tuple[int, FrameOutput]] = [(self.num_maskmem - 1, out) for out in selected.values()]
        for k in range(self.num_maskmem - 1, 0, -1):  # frames at distance k, farthest first
            if valid is not None:
                if k > len(valid):
                    continue
                prev_idx = valid[-k]
            else:
                prev_idx = frame_idx - k if not reverse else frame_idx + k
            out = bank.non_cond.get(prev_idx, unselected.get(prev_idx))
            if out is not None:
                memories.append((k - 1, out))

        tokens, pos_tokens = [], []
        pos = memory_pos.flatten(2).transpose(1, 2).expand(batch, -1, -1)  # B, hw, mem_dim
        for tpos_index, out in memories:
            tokens.append(out.maskmem_features.to(features.pix.device).flatten(2).transpose(1, 2).float())
            pos_tokens.append(pos + self.maskmem_tpos_enc[tpos_index].reshape(1, 1, -1))

        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        pointers = [
            ((frame_idx - t) * sign, out.obj_ptr)
            for t, out in selected.items()
            if (t >= frame_idx if reverse else t <= frame_idx)
        ]
        for distance in range(1, max_ptrs):
            if valid is not None:
                if distance >= len(valid):
                    break
                t = valid[-distance]
            else:
                t = frame_idx + distance if reverse else frame_idx - distance
                if t < 0 or t >= num_frames:
                    break
            out = bank.non_cond.get(t, unselected.get(t))
            if out is not None:
                pointers.append((distance, out.obj_ptr))
        num_ptr_tokens = 0
        if pointers:
            split = channels // self.mem_dim
            ptrs = torch.stack([p for _, p in pointers], dim=1).to(features.pix.device)  # B, P, C
            tokens.append(ptrs.reshape(batch, len(pointers) * split, self.mem_dim))
            tpos = self.pointer_tpos([d for d, _ in pointers], max_ptrs, features.pix.device)  # P, mem_dim
            pos_tokens.append(tpos.repeat_interleave(split, dim=0)[None].expand(batch, -1, -1))
            num_ptr_tokens = len(pointers) * split

        memory = torch.cat(tokens, dim=1)
        memory_pos_all = torch.cat(pos_tokens, dim=1)
        curr = features.pix.flatten(2).transpose(1, 2)  # B, hw, C
        curr_pos = features.pos.flatten(2).transpose(1, 2)
        out = self.memory_attention(
            curr, curr_pos, memory, memory_pos_all, num_obj_ptr_tokens=num_ptr_tokens, feat_hw=(h, w)
        )
        return out.transpose(1, 2).reshape(batch, channels, h, w)

    def _selected_frames(self, bank: MemoryBank, frame_idx: int, num_frames: int, reverse: bool) -> list[int]:
        """Memory selection: tracked frames (newest last) whose score exceeds `mf_threshold`, scanned
        from the frame next to `frame_idx` outwards (the first / last video frame excluded), at most
        min(num_frames, max_obj_ptrs) - 1 of them; the neighbouring frame is always kept."""
        if (frame_idx == 0 and not reverse) or (frame_idx == num_frames - 1 and reverse):
            return []
        limit = min(num_frames, self.max_obj_ptrs_in_encoder) - 1
        neighbour = frame_idx + 1 if reverse else frame_idx - 1
        scan = range(frame_idx + 1, num_frames) if reverse else range(frame_idx - 1, 0, -1)
        valid: list[int] = []
        for t in scan:
            out = bank.non_cond.get(t)
            if out is None or out.eff_iou_score is None:
                continue
            if out.eff_iou_score > self.mf_threshold:
                valid.insert(0, t)
            if len(valid) >= limit:
                break
        if neighbour not in valid:
            valid.append(neighbour)
        return valid

    def track_frame(
        self,
        frame_idx: int,
        features: TrackerFrameFeatures,
        bank: MemoryBank,
        *,
        is_init_cond_frame: bool,
        num_frames: int,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        prev_mask_logits: torch.Tensor | None = None,
        reverse: bool = False,
        run_mem_encoder: bool = True,
        use_prev_mem_frame: bool = True,
        memory_pos: torch.Tensor | None = None,
    ) -> tuple[FrameOutput, HeadsOutput, torch.Tensor | None]:
        """Segment B objects on one frame from their prompts and memory; optionally encode the memory.

        Args:
            features: the frame's features expanded to B.
            bank: the B objects' outputs on other frames.
            is_init_cond_frame: a first prompted frame (no memory is read).
            points: (B, N, 2) model-input pixels and (B, N) labels.
            mask: (B, 1, M, M) mask prompt in [0, 1] (taken as the output).
            prev_mask_logits: (B, 1, 4h, 4w) previous logits fed back with new clicks.
            run_mem_encoder: encode the output into memory (float32 here; stored in bfloat16).
            use_prev_mem_frame: read the memory on a non-initial frame.

        Returns:
            the frame output (memory float32, pred masks low-res), the heads' output, the memory's encoding.
        """
        if mask is not None:
            heads = self.mask_as_output(features.pix, features.high_res, mask)
        else:
            if is_init_cond_frame or not use_prev_mem_frame:
                pix = features.pix + self.no_mem_embed.reshape(1, -1, 1, 1)
            else:
                pix = self.condition_on_memory(frame_idx, features, bank, memory_pos, num_frames, reverse)
            num_points = 0 if points is None else points[1].shape[1]
            coords, labels = points if points is not None else (None, None)
            heads = self.run_heads(
                pix,
                features.high_res,
                coords,
                labels,
                mask_input=prev_mask_logits,
                multimask_output=self.use_multimask(is_init_cond_frame, num_points),
            )
        out = FrameOutput(
            pred_masks=heads.low_res_masks, obj_ptr=heads.obj_ptr, object_score_logits=heads.object_score_logits
        )
        if self.use_memory_selection:
            out.iou_score = heads.ious.max(dim=-1).values
            out.eff_iou_score = self.memory_score(heads.object_score_logits, out.iou_score)
        pos = None
        if run_mem_encoder:
            out.maskmem_features, pos = self.encode_memory(
                features.pix, heads.high_res_masks, heads.object_score_logits, binarize=points is not None
            )
        return out, heads, pos


def closest_cond_frames(
    frame_idx: int, cond: dict[int, FrameOutput], max_frames: int
) -> tuple[dict[int, FrameOutput], dict[int, FrameOutput]]:
    """Split conditioning frames into those attended (the closest before and at/after `frame_idx`, then
    the temporally closest others, `max_frames` in all; -1 all) and the rest."""
    if max_frames == -1 or len(cond) <= max_frames:
        return cond, {}
    chosen: dict[int, FrameOutput] = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    if before is not None:
        chosen[before] = cond[before]
    after = min((t for t in cond if t >= frame_idx), default=None)
    if after is not None:
        chosen[after] = cond[after]
    rest = sorted((t for t in cond if t not in chosen), key=lambda t: abs(t - frame_idx))
    for t in rest[: max_frames - len(chosen)]:
        chosen[t] = cond[t]
    return chosen, {t: v for t, v in cond.items() if t not in chosen}


def sine_1d(x: torch.Tensor, dim: int, temperature: float = POINTER_TPOS_TEMPERATURE) -> torch.Tensor:
    """(P,) positions -> (P, dim): sin then cos of x / temperature^(2 floor(i/2) / (dim/2))."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=x.device)
    angles = x[:, None] / temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
