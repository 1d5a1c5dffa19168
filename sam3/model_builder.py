"""Builders that Hydra `_target_`s point at. Every size comes from the config (`configs/model/*.yaml`);
these functions only compose already-built modules and load weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sam3.model.feature_extractor import FrozenImageEncoder
from sam3.model.neck import ViTDetNeck
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
