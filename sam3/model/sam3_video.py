"""Sam3ImageOnVideoMultiGPU: the image model run over the frames of a clip, sharded across a frame group.

Frame t of a clip belongs to group rank t mod F (DESIGN.md "Frame sharding"). In training the data side
already hands each rank only its frames, so the forward is the image model's forward on those frames;
a rank with no frame (a clip shorter than the group) runs a placeholder frame so that it issues the same
collectives (its loss is given zero weight by the training step). Per-frame outputs travel between the
ranks of the group through asynchronous all-gathers into a buffer that waits only when a frame is read.

At inference a video is processed chunk by chunk (a chunk is F consecutive frames in processing order;
group rank r computes the chunk's r-th frame); the next chunk is computed while the current one travels.

The frame sharder (`sam3.distributed.frame_shard.FrameSharder`) is injected by the builder; the model
never reads the environment and never imports distributed code. Without a sharder it behaves as a group
of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from sam3.model.decoder import QueryDecoder
from sam3.model.encoder import FusionEncoder
from sam3.model.geometry_encoder import GeometryEncoder, GeometryPrompts
from sam3.model.sam3_image import Sam3Image
from sam3.model.scoring import DotProductScoring
from sam3.model.seg_head import SegmentationHead
from sam3.model.vl_backbone import VLBackbone
from sam3.structures import ClipBatch, DetectorOutput

FrameOutputs = dict[str, torch.Tensor]
# Per-frame hook applied on the owning rank before the gather (e.g. NMS); output shapes must not
# depend on the content, since every rank gathers same-shaped tensors.
FramePostprocess = Callable[[int, FrameOutputs], FrameOutputs]

INFERENCE_KEYS = ("pred_logits", "pred_boxes", "presence_logit_dec", "pred_masks")


class FrameSharderLike(Protocol):
    """What the model needs from `sam3.distributed.frame_shard.FrameSharder`."""

    group_size: int
    group_rank: int

    def new_buffer(self) -> Any: ...

    def gather_into(self, buffer: Any, chunk_keys: list, tensors: dict, wait: bool = False) -> None: ...

    def all_gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]: ...


class Sam3ImageOnVideoMultiGPU(Sam3Image):
    """Multi-frame SAM3 detector whose frames are spread over the ranks of a frame group.

    Args:
        backbone, encoder, decoder, dot_prod_scoring, geometry_encoder, segmentation_head: the parts of
            `Sam3Image` (same parameter names, so image checkpoints load unchanged).
        frame_sharder: this rank's frame group; None means a group of one (no communication).
        async_all_gather: gather per-frame outputs asynchronously (waiting only when a frame is read);
            False waits after every gather (for comparison and debugging).
        gather_backbone_out: at inference, gather each frame's backbone features instead of its
            detector outputs, and run the grounding head for every frame on every rank (trades compute
            for flexibility: every rank then holds each frame's full outputs, intermediate ones included).
    """

    def __init__(
        self,
        *,
        backbone: VLBackbone,
        encoder: FusionEncoder,
        decoder: QueryDecoder,
        dot_prod_scoring: DotProductScoring,
        geometry_encoder: GeometryEncoder,
        segmentation_head: SegmentationHead | None,
        frame_sharder: FrameSharderLike | None = None,
        async_all_gather: bool = True,
        gather_backbone_out: bool = False,
    ) -> None:
        super().__init__(
            backbone=backbone,
            encoder=encoder,
            decoder=decoder,
            dot_prod_scoring=dot_prod_scoring,
            geometry_encoder=geometry_encoder,
            segmentation_head=segmentation_head,
        )
        self.frame_sharder = frame_sharder
        self.async_all_gather = async_all_gather
        self.gather_backbone_out = gather_backbone_out

    @property
    def group_size(self) -> int:
        return 1 if self.frame_sharder is None else self.frame_sharder.group_size

    @property
    def group_rank(self) -> int:
        return 0 if self.frame_sharder is None else self.frame_sharder.group_rank

    # ------------------------------------------------------------------------------------ training
    def forward(self, batch: ClipBatch, geometry: GeometryPrompts | None = None) -> DetectorOutput:
        """Runs backbone and grounding on the frames this rank holds.

        Returns the `DetectorOutput` over the batch's (frame, prompt) pairs. When the batch holds no
        frame, returns outputs for a zero placeholder frame with the first clip's prompts; the caller
        gives them zero weight (they keep every rank's collectives in step).
        """
        if batch.num_local_frames > 0:
            return super().forward(batch, geometry)
        images = torch.zeros(1, *batch.images.shape[1:], dtype=batch.images.dtype, device=batch.images.device)
        num_prompts = len(batch.prompts[0])
        vision = self.backbone.forward_image(images)
        text = self.backbone.forward_text(batch.prompts[0])
        slots = torch.zeros(num_prompts, dtype=torch.int64, device=images.device)
        text_idx = torch.arange(num_prompts, device=images.device)
        return self.forward_grounding(vision, text, slots, text_idx)

    def gather_frame_outputs(
        self, batch: ClipBatch, outputs: DetectorOutput, keys: tuple[str, ...] = ("pred_logits", "pred_boxes", "presence_logit_dec")
    ) -> Any:
        """Gathers the detached per-frame outputs of every clip of the batch to every rank of the group.

        Returns the sharder's buffer keyed by (clip index, global frame index); each entry holds the
        named tensors for that frame's P prompts, e.g. `pred_logits` (P, Q, 1). Frames are waited on
        only when read.
        """
        buffer = self._new_buffer()
        num_frames = batch.num_frames.tolist()
        layout_source = self._pair_slices(batch, outputs, keys)
        for clip, length in enumerate(num_frames):
            for chunk_start in range(0, max(length, 1), self.group_size):
                chunk_keys = [
                    (clip, chunk_start + r) if chunk_start + r < length else None for r in range(self.group_size)
                ]
                mine = chunk_keys[self.group_rank]
                tensors = layout_source.get(mine) if mine is not None else None
                if tensors is None:
                    tensors = {k: torch.zeros_like(v) for k, v in self._placeholder(batch, outputs, keys, clip).items()}
                self._gather(buffer, chunk_keys, tensors)
        return buffer

    def gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Same-shaped tensors of every group rank, with gradients flowing back to their owners."""
        if self.frame_sharder is None:
            return [tensor]
        return self.frame_sharder.all_gather_with_grad(tensor)

    # ----------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def forward_video_grounding_multigpu(
        self,
        load_frame: Callable[[int], torch.Tensor],
        num_frames: int,
        texts: list[str],
        *,
        reverse: bool = False,
        postprocess: FramePostprocess | None = None,
        frame_shape: tuple[int, int, int] | None = None,
    ) -> dict[int, FrameOutputs]:
        """Grounds every prompt in every frame of a video; every rank ends with every frame's outputs.

        Args:
            load_frame: returns frame t as a (3, H, W) normalised image on the model's device. It is
                called only for the frames this rank computes: in forward order exactly the frames it
                owns (t mod F == group rank), the frames the data side decoded for it.
            num_frames: T, frames in the video.
            texts: the P prompts.
            reverse: process the frames from last to first.
            postprocess: optional per-frame hook applied before the gather (see `FramePostprocess`).
            frame_shape: (3, H, W) of the frames; needed only when this rank may own no frame at all
                (T < F), where it computes a placeholder frame to keep the group's collectives in step.

        Returns:
            frame index -> named tensors for the frame's P prompts: `pred_logits` (P, Q, 1), `pred_boxes`
            (P, Q, 4) normalised cxcywh, `presence_logit_dec` (P, 1), `pred_masks` (P, Q, h, w) logits
            (when segmentation is enabled), or whatever `postprocess` returns.
        """
        frames = self.iter_video_grounding(
            load_frame, num_frames, texts, reverse=reverse, postprocess=postprocess, frame_shape=frame_shape
        )
        return dict(frames)

    @torch.no_grad()
    def iter_video_grounding(
        self,
        load_frame: Callable[[int], torch.Tensor],
        num_frames: int,
        texts: list[str],
        *,
        reverse: bool = False,
        postprocess: FramePostprocess | None = None,
        frame_shape: tuple[int, int, int] | None = None,
    ) -> Iterator[tuple[int, FrameOutputs]]:
        """Like `forward_video_grounding_multigpu`, yielding (frame index, outputs) in processing order.

        Chunk k + 1 is computed and its gather started before chunk k is yielded, so the gather of one
        chunk overlaps the computation of the next; a chunk is evicted once yielded.
        """
        if num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
        if self.group_rank >= num_frames and frame_shape is None:
            raise ValueError(
                f"group rank {self.group_rank} owns no frame of this {num_frames}-frame video (fewer frames "
                f"than the group's {self.group_size} ranks): pass frame_shape=(3, H, W) so it can compute a "
                "placeholder frame and keep the group's collectives in step"
            )
        order = list(range(num_frames))[:: -1 if reverse else 1]
        chunks = [order[i : i + self.group_size] for i in range(0, num_frames, self.group_size)]
        text = self.backbone.forward_text(texts)
        buffer = self._new_buffer()
        previous: list[int] | None = None
        placeholder = None
        for chunk in chunks:
            chunk_keys: list[int | None] = [chunk[r] if r < len(chunk) else None for r in range(self.group_size)]
            mine = chunk_keys[self.group_rank]
            if mine is not None:
                image = load_frame(mine).unsqueeze(0)
                placeholder = torch.zeros_like(image)
            else:  # past the end of the video: compute a placeholder whose outputs are dropped
                image = self._placeholder_frame(placeholder, frame_shape)
            frame_idx = chunk[-1] if mine is None else mine
            vision = self.backbone.forward_image(image)
            if self.gather_backbone_out:
                self._gather(buffer, chunk_keys, _flatten_vision(vision))
            else:
                self._gather(buffer, chunk_keys, self._frame_outputs(frame_idx, vision, text, len(texts), postprocess))
            if previous is not None:
                yield from self._drain(buffer, previous, text, len(texts), postprocess)
            previous = chunk
        if previous is not None:
            yield from self._drain(buffer, previous, text, len(texts), postprocess)

    # ---------------------------------------------------------------------------------- internals
    def _new_buffer(self) -> Any:
        if self.frame_sharder is None:
            return _LocalBuffer()
        return self.frame_sharder.new_buffer()

    def _placeholder_frame(self, previous: torch.Tensor | None, frame_shape: tuple[int, int, int] | None) -> torch.Tensor:
        if previous is not None:
            return previous
        parameter = next(self.parameters())
        return torch.zeros(1, *frame_shape, dtype=parameter.dtype, device=parameter.device)

    def _gather(self, buffer: Any, chunk_keys: list, tensors: FrameOutputs) -> None:
        if self.frame_sharder is None:
            buffer.put(chunk_keys[0], tensors)
        else:
            self.frame_sharder.gather_into(buffer, chunk_keys, tensors, wait=not self.async_all_gather)

    def _frame_outputs(
        self, frame_idx: int, vision: dict, text: dict, num_prompts: int, postprocess: FramePostprocess | None
    ) -> FrameOutputs:
        device = vision["backbone_fpn"][-1].device
        slots = torch.zeros(num_prompts, dtype=torch.int64, device=device)
        text_idx = torch.arange(num_prompts, device=device)
        output = self.forward_grounding(vision, text, slots, text_idx)
        tensors = {k: getattr(output, k) for k in INFERENCE_KEYS if getattr(output, k) is not None}
        return postprocess(frame_idx, tensors) if postprocess is not None else tensors

    def _drain(
        self, buffer: Any, chunk: list[int], text: dict, num_prompts: int, postprocess: FramePostprocess | None
    ) -> Iterator[tuple[int, FrameOutputs]]:
        for frame_idx in chunk:
            tensors = buffer.get(frame_idx)
            if self.gather_backbone_out:
                tensors = self._frame_outputs(frame_idx, _unflatten_vision(tensors), text, num_prompts, postprocess)
            yield frame_idx, tensors
        buffer.evict(chunk)

    @staticmethod
    def _pair_slices(batch: ClipBatch, outputs: DetectorOutput, keys: tuple[str, ...]) -> dict:
        """(clip, frame) -> this rank's named output tensors of that frame's pairs, detached."""
        if batch.num_pairs == 0:
            return {}
        result = {}
        clip_idx = batch.pairs.clip_idx.tolist()
        frame_idx = batch.pairs.frame_idx.tolist()
        start = 0
        while start < len(clip_idx):
            end = start
            while end < len(clip_idx) and (clip_idx[end], frame_idx[end]) == (clip_idx[start], frame_idx[start]):
                end += 1
            result[(clip_idx[start], frame_idx[start])] = {
                k: getattr(outputs, k)[start:end].detach() for k in keys if getattr(outputs, k) is not None
            }
            start = end
        return result

    @staticmethod
    def _placeholder(batch: ClipBatch, outputs: DetectorOutput, keys: tuple[str, ...], clip: int) -> FrameOutputs:
        """Same-shaped stand-in for a frame this rank does not hold: P_clip pairs of per-pair tensors."""
        num_prompts = len(batch.prompts[clip])
        return {
            k: getattr(outputs, k)[:1].detach().expand(num_prompts, *getattr(outputs, k).shape[1:]).contiguous()
            for k in keys
            if getattr(outputs, k) is not None
        }


class _LocalBuffer:
    """The buffer of a group of one: frames are stored as computed, nothing travels."""

    def __init__(self) -> None:
        self._frames: dict[Any, FrameOutputs] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, key: Any, tensors: FrameOutputs) -> None:
        if key is not None:
            self._frames[key] = tensors

    def get(self, key: Any) -> FrameOutputs:
        return self._frames[key]

    def evict(self, keys: list) -> None:
        for key in keys:
            self._frames.pop(key, None)


def _flatten_vision(vision: dict) -> FrameOutputs:
    tensors = {}
    for name in ("backbone_fpn", "vision_pos_enc"):
        for level, tensor in enumerate(vision[name]):
            tensors[f"{name}.{level}"] = tensor
    return tensors


def _unflatten_vision(tensors: FrameOutputs) -> dict:
    vision: dict[str, list[torch.Tensor]] = {"backbone_fpn": [], "vision_pos_enc": []}
    for name in vision:
        level = 0
        while f"{name}.{level}" in tensors:
            vision[name].append(tensors[f"{name}.{level}"])
            level += 1
    return vision
