"""SAM3's tracker heads (SAM3 paper, "Tracker"; SAM2's architecture): today the interactive part, the
prompt encoder and mask decoder that segment one object from clicks, boxes and a previous mask on one
image. Parameter names equal the released `tracker.*` names without the prefix, so the memory encoder,
memory attention and object pointers of the video tracker can be added to this module later.

Image features come from the detector's own trunk through the neck's `sam2_convs` pyramid (levels at
4x, 2x and 1x the token grid); `no_mem_embed` is added to the 1x level, as for a frame without memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam3.model.mask_decoder import DecodedMasks, MaskDecoder
from sam3.model.prompt_encoder import PromptEncoder


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
        return InteractiveFeatures(self.image_embed[idx : idx + 1], tuple(f[idx : idx + 1] for f in self.high_res_feats))


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


class Tracker(nn.Module):
    """Interactive (SAM-style) heads on the detector's second feature pyramid.

    Args:
        d_model: width C of the heads (the neck's width).
        sam_prompt_encoder: points / boxes / mask -> prompt embeddings.
        sam_mask_decoder: prompt embeddings + image features -> masks, IoU, object score.
    """

    def __init__(self, *, d_model: int, sam_prompt_encoder: PromptEncoder, sam_mask_decoder: MaskDecoder) -> None:
        super().__init__()
        if sam_prompt_encoder.d_model != d_model:
            raise ValueError(f"prompt encoder width {sam_prompt_encoder.d_model} != tracker d_model {d_model}")
        self.d_model = d_model
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)

    @property
    def image_size(self) -> int:
        """Side of the square model input; point coordinates are pixels of it."""
        return self.sam_prompt_encoder.image_size

    def image_features(self, sam2_fpn: list[torch.Tensor]) -> InteractiveFeatures:
        """(B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w) levels of `sam2_convs` -> decoder inputs."""
        if len(sam2_fpn) < 3:
            raise ValueError(f"the interactive heads need 3 sam2 pyramid levels (4x, 2x, 1x), got {len(sam2_fpn)}")
        decoder = self.sam_mask_decoder
        image_embed = sam2_fpn[2] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return InteractiveFeatures(image_embed, (decoder.conv_s0(sam2_fpn[0]), decoder.conv_s1(sam2_fpn[1])))

    def forward(
        self,
        features: InteractiveFeatures,
        points_xy: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> InteractiveOutput:
        """Segment B prompt sets on one image.

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
