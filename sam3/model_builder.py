"""Builders that Hydra `_target_`s point at, and `build_model`, the public way to get a model by name.

Every size comes from the config (`configs/model/*.yaml`); the `build_sam3_*` functions only compose
already-built modules and load weights. How a built model runs (activation checkpointing,
`torch.compile`, eval mode) is set afterwards by `apply_runtime_policy`, called by the entry point and
the tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from sam3.checkpoint import load_sam3_weights, load_state_dict, read_model_config, read_state_dict
from sam3.model.decoder import QueryDecoder
from sam3.model.encoder import FusionEncoder
from sam3.model.geometry_encoder import GeometryEncoder
from sam3.model.neck import ViTDetNeck
from sam3.model.sam3_image import Sam3Image, init_transformer_weights
from sam3.model.sam3_video import Sam3ImageOnVideoMultiGPU
from sam3.model.scoring import DotProductScoring
from sam3.model.seg_head import SegmentationHead
from sam3.model.text_encoder import TextEncoder
from sam3.model.tracker import Tracker
from sam3.model.vl_backbone import VLBackbone

logger = logging.getLogger(__name__)


def config_dir() -> Path:
    """The Hydra config folder: `sam3/configs` in an installed package, `configs/` in a source checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def model_names() -> list[str]:
    """The model presets `build_model` accepts (`configs/model/*.yaml`)."""
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def build_model(
    name: str | None,
    *,
    video: bool = False,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Sam3Image:
    """A SAM3 model by preset name, optionally with weights; in train mode, as `nn.Module`s start.

        model = sam3.build_model("sam3", checkpoint="sam3.pt").eval()
        model = sam3.build_model(None, checkpoint="runs/demo_shapes_video/checkpoints/step_00000700.pt")

    Args:
        name: a preset of `configs/model/` ("sam3", "tiny"), or None to use the model config stored in
            `checkpoint` (our training checkpoints carry the one they were trained with).
        video: return the frame-sharded video model (`configs/video_model/`) as a group of one.
        checkpoint: official, bare, DDP or training checkpoint, loaded strictly (a LoRA run's with its
            adapters merged, `sam3.checkpoint.read_state_dict`).
        overrides: Hydra overrides of the model config, e.g. ["decoder.num_queries=8"].
    """
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if name is None:
        if checkpoint is None:
            raise ValueError(f"build_model: give a model name (one of {model_names()}) or a training checkpoint")
        stored = read_model_config(checkpoint)
        if stored is None:
            raise ValueError(
                f"checkpoint {checkpoint} carries no model config (only our training checkpoints do); "
                f"name its preset, e.g. build_model('sam3', checkpoint=...) (presets: {model_names()})"
            )
        model_cfg = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.from_dotlist(list(overrides)))
    else:
        model_cfg = model_config(name, overrides)
    image_model = instantiate(model_cfg, checkpoint_path=None if checkpoint is None else str(checkpoint))
    if not video:
        return image_model
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        video_cfg = compose(overrides=["+video_model=frame_sharded"]).video_model
    return instantiate(video_cfg, image_model=image_model)


def model_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config of a model preset (`configs/model/NAME.yaml`), e.g. to build one part of it.

    Args:
        name: preset name ("sam3", "tiny").
        overrides: Hydra overrides relative to the model config, e.g. ["decoder.num_queries=8"].
    """
    from hydra import compose, initialize_config_dir

    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; presets: {model_names()}")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(overrides=[f"+model={name}", *(_under_model(o) for o in overrides)]).model


def _under_model(override: str) -> str:
    """A model-relative Hydra override as one of the `model` node: "+decoder.x=1" -> "+model.decoder.x=1"."""
    body = override.lstrip("+~")
    return f"{override[: len(override) - len(body)]}model.{body}"


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
        load_sam3_weights(backbone, checkpoint_path, prefix="backbone.")
    return backbone


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
    tracker: Tracker | None = None,
    checkpoint_path: str | Path | None = None,
) -> Sam3Image:
    """Compose the SAM3 image model from built parts, then load weights (never overwritten by init).

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
        tracker: interactive heads and video memory; they need the neck's `sam2_convs` pyramid. None
            leaves them out (a checkpoint's `tracker.*` and `sam2_convs` keys are then reported unused).
        checkpoint_path: official, bare, DDP or training checkpoint loaded strictly through
            `sam3.checkpoint`; None keeps the initialisation.
    """
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
    if tracker is not None and backbone.vision_backbone.sam2_convs is None:
        raise ValueError(
            "the tracker needs the neck's second pyramid: set backbone.vision_backbone.use_sam2_convs=true, "
            "or tracker=null to build the model without interactive heads"
        )
    if tracker is not None and tracker.d_model != d_model:
        raise ValueError(f"model width d_model={d_model} but the tracker's is {tracker.d_model}")
    model = Sam3Image(
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        dot_prod_scoring=dot_prod_scoring,
        geometry_encoder=geometry_encoder,
        segmentation_head=segmentation_head if enable_segmentation else None,
        tracker=tracker,
    )
    init_transformer_weights(model)
    if checkpoint_path is not None:
        _load_image_model_checkpoint(model, checkpoint_path, enable_segmentation)
    return model


def build_sam3_video_model(*, image_model: Sam3Image) -> Sam3ImageOnVideoMultiGPU:
    """The video model around a built (and loaded) image model's parts; no new weights. Frame groups
    are applied from outside (`sam3.distributed.video_inference`, `sam3.train.step`).

    Args:
        image_model: from `build_sam3_image_model`; its modules are taken over, not copied.
    """
    return Sam3ImageOnVideoMultiGPU(**image_model.parts())


def apply_runtime_policy(
    model: nn.Module, *, act_checkpoint: bool | None = None, compile: bool = False, eval_mode: bool = False
) -> nn.Module:
    """How a built model runs, set in one place by the entry point or tool (never by the builders).

    Args:
        model: a built `Sam3Image` (or video model).
        act_checkpoint: when not None, set activation checkpointing on every part that has it (it
            only acts in training); None keeps each part's own flag.
        compile: compile the image trunk, fusion encoder and decoder in place with `torch.compile`.
        eval_mode: put the model in eval mode.

    Returns:
        `model`, changed in place.
    """
    if act_checkpoint is not None:
        for module in model.modules():
            if hasattr(module, "use_act_checkpoint"):
                module.use_act_checkpoint = act_checkpoint
    if compile:
        for module in (model.backbone.vision_backbone, model.transformer["encoder"], model.transformer["decoder"]):
            module.compile()
    if eval_mode:
        model.eval()
    return model


def _load_image_model_checkpoint(model: nn.Module, path: str | Path, with_segmentation: bool) -> None:
    """Strict load of a full-model checkpoint; drops `segmentation_head.*` when the model has none."""
    state_dict, wrapped = read_state_dict(path)
    if not with_segmentation:
        kept = {k: v for k, v in state_dict.items() if ".segmentation_head." not in f".{k}"}
        logger.info(
            "segmentation disabled: ignoring %d segmentation_head tensors of %s", len(state_dict) - len(kept), path
        )
        state_dict = kept
    load_state_dict(model, state_dict, strict=True, source=str(path), wrapped=wrapped)
