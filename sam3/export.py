"""`torch.export` of the whole grounding pipeline: one `ExportedProgram` from pixels and token ids to
boxes, scores and masks (image encoder, text encoder, geometry encoder, fusion encoder, decoder,
scoring, segmentation head), runnable with plain torch and no `sam3` installed (an artifact with box
prompts calls torchvision's `roi_align`: `import torchvision` registers it before loading).

The artifact's contract is tensors only (no strings, no dataclasses):

    inputs   images      (B, 3, H, W) float32, normalised to [-1, 1] ((pixel / 255 - 0.5) / 0.5)
             token_ids   (P, L) int64 from `ClipTokenizer` (L = the model's context length, 32)
             with boxes: boxes_cxcywh (P, K, 4) float32 normalised, box_labels (P, K) bool
                         (True = positive exemplar), box_padding (P, K) bool (True = padding)
    outputs  pred_logits (B*P, Q, 1), pred_boxes (B*P, Q, 4) normalised cxcywh,
             presence_logit_dec (B*P, 1), pred_masks (B*P, Q, 4h, 4w) logits (h, w = H/14, W/14),
             scores (B*P, Q) = sigmoid(logit) * sigmoid(presence)

Every prompt is applied to every image; row b*P + p is image b with prompt p (image-major). B, P
(and K) are dynamic, at least 1; H, W and L are fixed at export. Outputs are float32; a bf16 export
runs the model under autocast inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from sam3.model.geometry_encoder import GeometryPrompts
from sam3.model.sam3_image import Sam3Image

OUTPUT_NAMES = ("pred_logits", "pred_boxes", "presence_logit_dec", "pred_masks", "scores")


class ExportableSam3(nn.Module):
    """Tensor-in, tensor-out view of a `Sam3Image` for `torch.export` (see the module docstring).

    Args:
        model: the grounding model in eval mode; its modules are used, not copied.
        use_bf16: run the model under bfloat16 autocast (outputs are still float32).
    """

    def __init__(self, model: Sam3Image, *, use_bf16: bool = False) -> None:
        super().__init__()
        if model.segmentation_head is None:
            raise ValueError("export needs the segmentation head (pred_masks); build the model with masks")
        self.model = model
        self.use_bf16 = use_bf16

    def forward(
        self,
        images: torch.Tensor,
        token_ids: torch.Tensor,
        boxes_cxcywh: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
        box_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Every (image, prompt) pair, image-major; the outputs of `OUTPUT_NAMES` (shapes above)."""
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            out = self._grounding(images, token_ids, boxes_cxcywh, box_labels, box_padding)
        return tuple(t.float() for t in out)

    def _grounding(
        self,
        images: torch.Tensor,
        token_ids: torch.Tensor,
        boxes_cxcywh: torch.Tensor | None,
        box_labels: torch.Tensor | None,
        box_padding: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        num_images, num_prompts = images.shape[0], token_ids.shape[0]
        vision = self.model.backbone.forward_image(images)
        text = self.model.backbone.forward_tokens(token_ids)
        images_idx = torch.arange(num_images, device=images.device)
        prompts_idx = torch.arange(num_prompts, device=images.device)
        pair_frame_slot = images_idx.repeat_interleave(num_prompts)  # B*P, image-major
        pair_text_idx = prompts_idx.repeat(num_images)  # B*P
        geometry = None
        if boxes_cxcywh is not None:
            geometry = GeometryPrompts(
                boxes_cxcywh=boxes_cxcywh[pair_text_idx],
                box_labels=box_labels[pair_text_idx],
                box_padding=box_padding[pair_text_idx],
            )
        out = self.model.forward_grounding(vision, text, pair_frame_slot, pair_text_idx, geometry)
        return out.pred_logits, out.pred_boxes, out.presence_logit_dec, out.pred_masks, out.scores()


@dataclass(frozen=True)
class ExampleInputs:
    """Example inputs that fix the static sizes of an export and serve as its check batch."""

    images: torch.Tensor
    token_ids: torch.Tensor
    boxes_cxcywh: torch.Tensor | None = None
    box_labels: torch.Tensor | None = None
    box_padding: torch.Tensor | None = None

    def as_args(self) -> tuple[torch.Tensor, ...]:
        """The positional inputs of the artifact, in order."""
        if self.boxes_cxcywh is None:
            return (self.images, self.token_ids)
        return (self.images, self.token_ids, self.boxes_cxcywh, self.box_labels, self.box_padding)


def example_inputs(
    model: Sam3Image,
    *,
    image_size: int,
    num_images: int = 2,
    prompts: tuple[str, ...] = ("red car", "dog"),
    num_boxes: int = 0,
    seed: int = 0,
) -> ExampleInputs:
    """Random normalised images and tokenised prompts; with `num_boxes`, random boxes per prompt
    (the first positive, the rest negative, the last padding when there are at least two)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    images = torch.rand(num_images, 3, image_size, image_size, generator=generator) * 2 - 1
    token_ids = model.backbone.language_backbone.tokenizer(list(prompts))
    if not num_boxes:
        return ExampleInputs(images.to(device), token_ids.to(device))
    num_prompts = len(prompts)
    centres = torch.rand(num_prompts, num_boxes, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(num_prompts, num_boxes, 2, generator=generator) * 0.3 + 0.05
    labels = torch.zeros(num_prompts, num_boxes, dtype=torch.bool)
    labels[:, 0] = True
    padding = torch.zeros(num_prompts, num_boxes, dtype=torch.bool)
    if num_boxes > 1:
        padding[:, -1] = True
    tensors = (images, token_ids, torch.cat([centres, sizes], dim=-1), labels, padding)
    return ExampleInputs(*(t.to(device) for t in tensors))


def export_model(
    model: Sam3Image, example: ExampleInputs, *, use_bf16: bool = False, strict: bool = False
) -> ExportedProgram:
    """Exports `model` (eval mode) with B, P and K dynamic (each >= 1) and the example's H, W, L fixed.

    Args:
        model: the grounding model; put in eval mode here.
        example: inputs fixing the static sizes (their B, P, K, each >= 2, are not baked in).
        use_bf16: bfloat16 autocast inside the graph.
        strict: trace with Dynamo (`strict=True`) instead of the Python-level tracer.
    """
    sizes = {"images": example.images.shape[0], "prompts": example.token_ids.shape[0]}
    if example.boxes_cxcywh is not None:
        sizes["boxes"] = example.boxes_cxcywh.shape[1]
    if min(sizes.values()) < 2:
        raise ValueError(
            f"export example sizes {sizes}: torch.export specialises a dynamic size seen as 1, so give at "
            "least 2 of each (the artifact still accepts 1)"
        )
    wrapper = ExportableSam3(model.eval(), use_bf16=use_bf16)
    batch, prompts = Dim("batch", min=1), Dim("prompts", min=1)
    shapes: list[dict[int, Dim] | None] = [{0: batch}, {0: prompts}]
    if example.boxes_cxcywh is not None:
        boxes = Dim("boxes", min=1)
        shapes += [{0: prompts, 1: boxes}] * 3
    with torch.no_grad():
        wrapper(*example.as_args())  # fills the position / RoPE caches, so tracing reads them as constants
        return torch.export.export(wrapper, example.as_args(), dynamic_shapes=tuple(shapes), strict=strict)


def compile_aoti(program: ExportedProgram, package_path: str | Path) -> Path:
    """AOTInductor-compiles `program` for the device of its example inputs into one `.pt2` package;
    load it with `torch._inductor.aoti_load_package(path)` (a callable taking the same inputs)."""
    from torch._inductor import aoti_compile_and_package

    return Path(aoti_compile_and_package(program, package_path=str(package_path)))


@torch.no_grad()
def max_abs_diff(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Per output name, max |got - expected| (the tuples follow `OUTPUT_NAMES`)."""
    if len(got) != len(expected):
        raise ValueError(f"{len(got)} outputs vs {len(expected)} expected ({OUTPUT_NAMES})")
    return {
        name: float((a.float() - b.float()).abs().max()) for name, a, b in zip(OUTPUT_NAMES, got, expected, strict=True)
    }
