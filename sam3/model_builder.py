"""Builders that Hydra `_target_`s point at. Every size comes from the config (`configs/model/*.yaml`);
these functions only compose already-built modules and load weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from sam3.model.decoder import QueryDecoder
from sam3.model.encoder import FusionEncoder
from sam3.model.feature_extractor import FrozenImageEncoder
from sam3.model.geometry_encoder import GeometryEncoder
from sam3.model.neck import ViTDetNeck
from sam3.model.sam3_image import Sam3Image
from sam3.model.sam3_video import Sam3ImageOnVideoMultiGPU
from sam3.model.scoring import DotProductScoring
from sam3.model.seg_head import SegmentationHead
from sam3.model.text_encoder import TextEncoder
from sam3.model.vl_backbone import VLBackbone

logger = logging.getLogger(__name__)


def build_vl_backbone(
    *,
    vision_backbone: ViTDetNeck,
    language_backbone: TextEncoder,
    num_feature_levels: int,
    checkpoint_path: str | Path | None = None,
) -> VLBackbone:
    """Compose the vision-language backbone, optionally loading its weights.

    Args:
        vision_backbone: trunk + neck.
        language_backbone: tokenizer + text transformer + resizer.
        num_feature_levels: pyramid levels passed on to the grounding model.
        checkpoint_path: a full-model checkpoint (official, bare, DDP or ours) whose `backbone.*`
            weights are loaded strictly; None keeps the initialisation.
    """
    backbone = VLBackbone(
        vision_backbone=vision_backbone, language_backbone=language_backbone, num_feature_levels=num_feature_levels
    )
    if checkpoint_path is not None:
        from sam3.checkpoint import load_checkpoint

        load_checkpoint(backbone, checkpoint_path, prefix="backbone.")
    return backbone


def build_frozen_image_encoder(*, backbone: VLBackbone, num_levels: int | None = None) -> FrozenImageEncoder:
    """Frozen multi-scale image feature extractor from a (loaded) backbone's trunk and neck."""
    return FrozenImageEncoder(backbone.vision_backbone, num_levels=num_levels)


def build_sam3_image_model(
    *,
    d_model: int,
    backbone: VLBackbone,
    encoder: FusionEncoder,
    decoder: QueryDecoder,
    dot_prod_scoring: DotProductScoring,
    geometry_encoder: GeometryEncoder,
    segmentation_head: SegmentationHead | None = None,
    enable_segmentation: bool = True,
    checkpoint_path: str | Path | None = None,
    eval_mode: bool = False,
    use_act_checkpoint: bool | None = None,
    compile: bool = False,
) -> Sam3Image:
    """Compose the SAM3 image model from built parts, optionally loading weights.

    Args:
        d_model: model width; every part must agree with it.
        backbone: vision-language backbone.
        encoder: fusion encoder.
        decoder: query decoder.
        dot_prod_scoring: query scorer.
        geometry_encoder: box / point prompt encoder.
        segmentation_head: mask head; dropped when `enable_segmentation` is False.
        enable_segmentation: keep the segmentation head (masks); False drops it, and a checkpoint's
            `segmentation_head.*` weights are then ignored.
        checkpoint_path: official, bare, DDP or training checkpoint loaded strictly through
            `sam3.checkpoint`; None keeps the initialisation.
        eval_mode: return the model in eval mode.
        use_act_checkpoint: when not None, set activation checkpointing on every part that has it
            (it only acts in training).
        compile: compile the image trunk, fusion encoder and decoder in place with `torch.compile`.
    """
    return _assemble(
        Sam3Image,
        {},
        d_model=d_model,
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        dot_prod_scoring=dot_prod_scoring,
        geometry_encoder=geometry_encoder,
        segmentation_head=segmentation_head,
        enable_segmentation=enable_segmentation,
        checkpoint_path=checkpoint_path,
        eval_mode=eval_mode,
        use_act_checkpoint=use_act_checkpoint,
        compile=compile,
    )


def build_sam3_image_video_model(
    *,
    d_model: int,
    backbone: VLBackbone,
    encoder: FusionEncoder,
    decoder: QueryDecoder,
    dot_prod_scoring: DotProductScoring,
    geometry_encoder: GeometryEncoder,
    segmentation_head: SegmentationHead | None = None,
    enable_segmentation: bool = True,
    checkpoint_path: str | Path | None = None,
    eval_mode: bool = False,
    use_act_checkpoint: bool | None = None,
    compile: bool = False,
) -> Sam3ImageOnVideoMultiGPU:
    """The frame-sharded video model from the image model's config tree; arguments as
    `build_sam3_image_model` (image checkpoints load unchanged). Frame groups are applied from outside
    (`sam3.distributed`)."""
    return _assemble(
        Sam3ImageOnVideoMultiGPU,
        {},
        d_model=d_model,
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        dot_prod_scoring=dot_prod_scoring,
        geometry_encoder=geometry_encoder,
        segmentation_head=segmentation_head,
        enable_segmentation=enable_segmentation,
        checkpoint_path=checkpoint_path,
        eval_mode=eval_mode,
        use_act_checkpoint=use_act_checkpoint,
        compile=compile,
    )


def _assemble(
    model_cls: type[Sam3Image],
    extra_arguments: dict,
    *,
    d_model: int,
    backbone: VLBackbone,
    encoder: FusionEncoder,
    decoder: QueryDecoder,
    dot_prod_scoring: DotProductScoring,
    geometry_encoder: GeometryEncoder,
    segmentation_head: SegmentationHead | None,
    enable_segmentation: bool,
    checkpoint_path: str | Path | None,
    eval_mode: bool,
    use_act_checkpoint: bool | None,
    compile: bool,
) -> Sam3Image:
    """Builds `model_cls` from its parts (its constructor initialises the grounding transformer), then
    loads weights, so a checkpoint is never overwritten by initialisation."""
    widths = {
        "encoder": encoder.d_model,
        "decoder": decoder.d_model,
        "geometry_encoder": geometry_encoder.d_model,
    }
    wrong = {name: width for name, width in widths.items() if width != d_model}
    if wrong:
        raise ValueError(f"model width d_model={d_model} but these parts differ: {wrong}")
    if enable_segmentation and segmentation_head is None:
        raise ValueError("enable_segmentation=True needs a segmentation_head config")
    model = model_cls(
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        dot_prod_scoring=dot_prod_scoring,
        geometry_encoder=geometry_encoder,
        segmentation_head=segmentation_head if enable_segmentation else None,
        **extra_arguments,
    )
    if use_act_checkpoint is not None:
        for module in model.modules():
            if hasattr(module, "use_act_checkpoint"):
                module.use_act_checkpoint = use_act_checkpoint
    if checkpoint_path is not None:
        _load_image_model_checkpoint(model, checkpoint_path, enable_segmentation)
    if compile:
        for module in (model.backbone.vision_backbone, encoder, decoder):
            module.compile()
    if eval_mode:
        model.eval()
    return model


def _load_image_model_checkpoint(model: nn.Module, path: str | Path, with_segmentation: bool) -> None:
    """Strict load of a full-model checkpoint; drops `segmentation_head.*` when the model has none."""
    from sam3.checkpoint import load_state_dict, read_state_dict

    state_dict, wrapped = read_state_dict(path)
    if not with_segmentation:
        kept = {k: v for k, v in state_dict.items() if ".segmentation_head." not in f".{k}"}
        logger.info(
            "segmentation disabled: ignoring %d segmentation_head tensors of %s", len(state_dict) - len(kept), path
        )
        state_dict = kept
    load_state_dict(model, state_dict, strict=True, source=str(path), wrapped=wrapped)
