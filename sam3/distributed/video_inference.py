"""Whole-video grounding over a frame group: the chunked, prefetching inference schedule.

The schedule is applied from outside the model: `VideoGroundingRunner` drives the image model's
`backbone.forward_text`, `backbone.forward_image` and `forward_grounding` itself, so the model holds no
distributed behaviour. A video is processed chunk by chunk; a chunk is F consecutive frames in processing
order, and group rank r computes the chunk's r-th frame. Each frame's outputs travel to every rank of the
group through an asynchronous all-gather into a `FrameBuffer`; the next chunk is computed while the
current one travels, and a chunk is read (waiting only then) and evicted once the next one has started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from sam3.distributed.frame_shard import FrameBuffer, FrameGroup
from sam3.model.sam3_image import Sam3Image

FrameOutputs = dict[str, torch.Tensor]
# Per-frame hook applied on the owning rank before the gather (e.g. NMS); output shapes must not
# depend on the content, since every rank gathers same-shaped tensors.
FramePostprocess = Callable[[int, FrameOutputs], FrameOutputs]

INFERENCE_KEYS = ("pred_logits", "pred_boxes", "presence_logit_dec", "pred_masks")


class VideoGroundingRunner:
    """Grounds every prompt in every frame of a video, the frames spread over a frame group.

    Args:
        model: the grounding model (`Sam3Image` or its video subclass), in eval mode.
        group: this rank's frame group (`LocalFrameGroup` in a single process).
        async_gather: gather per-frame outputs asynchronously, waiting only when a frame is read; False
            waits after every gather (for comparison and debugging).
        gather_backbone_out: gather each frame's backbone features instead of its detector outputs, and
            run the grounding head for every frame on every rank (trades compute for flexibility: every
            rank then holds each frame's full outputs, intermediate ones included).
    """

    def __init__(
        self, model: Sam3Image, group: FrameGroup, *, async_gather: bool = True, gather_backbone_out: bool = False
    ) -> None:
        self.model = model
        self.group = group
        self.async_gather = async_gather
        self.gather_backbone_out = gather_backbone_out

    @torch.no_grad()
    def run(
        self,
        load_frame: Callable[[int], torch.Tensor],
        num_frames: int,
        texts: list[str],
        *,
        reverse: bool = False,
        postprocess: FramePostprocess | None = None,
        frame_shape: tuple[int, int, int] | None = None,
    ) -> Iterator[tuple[int, FrameOutputs]]:
        """Yields (frame index, outputs) for every frame of the video, in processing order, on every rank.

        Every rank of the group must consume the whole iterator (it issues the group's collectives).

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

        Yields:
            (t, named tensors for frame t's P prompts): `pred_logits` (P, Q, 1), `pred_boxes` (P, Q, 4)
            normalised cxcywh, `presence_logit_dec` (P, 1), `pred_masks` (P, Q, h, w) logits (when
            segmentation is enabled), or whatever `postprocess` returns.
        """
        group_size, group_rank = self.group.group_size, self.group.group_rank
        if num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
        if group_rank >= num_frames and frame_shape is None:
            raise ValueError(
                f"group rank {group_rank} owns no frame of this {num_frames}-frame video (fewer frames "
                f"than the group's {group_size} ranks): pass frame_shape=(3, H, W) so it can compute a "
                "placeholder frame and keep the group's collectives in step"
            )
        order = list(range(num_frames))[:: -1 if reverse else 1]
        chunks = [order[i : i + group_size] for i in range(0, num_frames, group_size)]
        text = self.model.backbone.forward_text(texts)
        buffer = self.group.new_buffer()
        previous: list[int] | None = None
        placeholder = None
        for chunk in chunks:
            chunk_keys: list[int | None] = [chunk[r] if r < len(chunk) else None for r in range(group_size)]
            mine = chunk_keys[group_rank]
            if mine is not None:
                image = load_frame(mine).unsqueeze(0)
                placeholder = torch.zeros_like(image)
            else:  # past the end of the video: compute a placeholder whose outputs are dropped
                image = self._placeholder_frame(placeholder, frame_shape)
            frame_idx = chunk[-1] if mine is None else mine
            vision = self.model.backbone.forward_image(image)
            if self.gather_backbone_out:
                tensors = _flatten_vision(vision)
            else:
                tensors = self._frame_outputs(frame_idx, vision, text, len(texts), postprocess)
            self.group.gather_into(buffer, chunk_keys, tensors, wait=not self.async_gather)
            if previous is not None:
                yield from self._drain(buffer, previous, text, len(texts), postprocess)
            previous = chunk
        if previous is not None:
            yield from self._drain(buffer, previous, text, len(texts), postprocess)

    def _placeholder_frame(
        self, previous: torch.Tensor | None, frame_shape: tuple[int, int, int] | None
    ) -> torch.Tensor:
        if previous is not None:
            return previous
        parameter = next(self.model.parameters())
        return torch.zeros(1, *frame_shape, dtype=parameter.dtype, device=parameter.device)

    def _frame_outputs(
        self, frame_idx: int, vision: dict, text: dict, num_prompts: int, postprocess: FramePostprocess | None
    ) -> FrameOutputs:
        device = vision["backbone_fpn"][-1].device
        slots = torch.zeros(num_prompts, dtype=torch.int64, device=device)
        text_idx = torch.arange(num_prompts, device=device)
        output = self.model.forward_grounding(vision, text, slots, text_idx)
        tensors = {k: getattr(output, k) for k in INFERENCE_KEYS if getattr(output, k) is not None}
        return postprocess(frame_idx, tensors) if postprocess is not None else tensors

    def _drain(
        self, buffer: FrameBuffer, chunk: list[int], text: dict, num_prompts: int, postprocess: FramePostprocess | None
    ) -> Iterator[tuple[int, FrameOutputs]]:
        for frame_idx in chunk:
            tensors = buffer.get(frame_idx)
            if self.gather_backbone_out:
                tensors = self._frame_outputs(frame_idx, _unflatten_vision(tensors), text, num_prompts, postprocess)
            yield frame_idx, tensors
        buffer.evict(chunk)


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
