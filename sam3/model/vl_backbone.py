"""Vision-language backbone of SAM3: the image feature pyramid and the text encoder side by side,
with no fusion (fusion happens in the grounding encoder).

Outputs are dictionaries with the keys the grounding model reads; image and text can be computed
separately (an image is encoded once and queried with many prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sam3.model.neck import ViTDetNeck
from sam3.model.text_encoder import TextEncoder, TextFeatures


class VLBackbone(nn.Module):
    """Image feature pyramid + text encoder.

    Args:
        vision_backbone: trunk and neck.
        language_backbone: tokenizer, text transformer and resizer.
        num_feature_levels: pyramid levels passed on, from the finest; the neck's remaining
            coarser levels are neither computed nor returned (they exist for checkpoint layout).
    """

    def __init__(self, *, vision_backbone: ViTDetNeck, language_backbone: TextEncoder, num_feature_levels: int) -> None:
        super().__init__()
        if not 1 <= num_feature_levels <= vision_backbone.num_levels:
            raise ValueError(
                f"num_feature_levels must be in [1, {vision_backbone.num_levels}] (the neck's levels), "
                f"got {num_feature_levels}"
            )
        self.vision_backbone = vision_backbone
        self.language_backbone = language_backbone
        self.num_feature_levels = num_feature_levels

    def forward(self, images: torch.Tensor, texts: Sequence[str]) -> dict[str, object]:
        """Encode images and texts: the union of `forward_image` and `forward_text`."""
        return {**self.forward_image(images), **self.forward_text(texts)}

    def forward_image(self, images: torch.Tensor, with_sam2: bool = False) -> dict[str, object]:
        """Encode images.

        Args:
            images: (B, 3, H, W) images normalised to [-1, 1] (mean 0.5, std 0.5), H and W multiples
                of the patch size.
            with_sam2: also return the neck's second pyramid (`sam2_backbone_fpn`, `sam2_vision_pos_enc`,
                same shapes as below) for the interactive heads, from the same trunk pass.

        Returns:
            backbone_fpn: list of (B, C, h_l, w_l) levels, finest first (4x, 2x, 1x the token grid).
            vision_pos_enc: list of (B, C, h_l, w_l) sine position encodings, one per level.
            vision_features: the coarsest returned level, (B, C, h, w).
        """
        if not with_sam2:
            features, pos = self.vision_backbone(images, num_levels=self.num_feature_levels)
            return {"backbone_fpn": features, "vision_pos_enc": pos, "vision_features": features[-1]}
        features, pos, sam2_features, sam2_pos = self.vision_backbone.forward_dual(images, self.num_feature_levels)
        return {
            "backbone_fpn": features,
            "vision_pos_enc": pos,
            "vision_features": features[-1],
            "sam2_backbone_fpn": sam2_features,
            "sam2_vision_pos_enc": sam2_pos,
        }

    def forward_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise and encode B texts; the keys of `forward_tokens`."""
        return _text_outputs(self.language_backbone(texts))

    def forward_tokens(self, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode (B, L) int64 token ids from the tokenizer (0 = padding).

        Returns:
            language_features: (L, B, C) per-token features.
            language_mask: (B, L) bool, True at padding.
            language_embeds: (L, B, width) token embeddings before the text transformer.
        """
        return _text_outputs(self.language_backbone.encode_tokens(token_ids))


def _text_outputs(text: TextFeatures) -> dict[str, torch.Tensor]:
    """`TextFeatures` under the keys the grounding model reads."""
    return {
        "language_features": text.features,
        "language_mask": text.padding_mask,
        "language_embeds": text.token_embeds,
    }
