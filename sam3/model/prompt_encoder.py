"""SAM prompt encoder (Kirillov et al., "Segment Anything", Sec. 3 and App. A "Prompt encoder"), the
SAM2 variant used by SAM3's interactive heads.

Sparse prompts are points with labels: 1 positive click, 0 negative click, 2 / 3 the top-left /
bottom-right box corners (boxes are given as two points placed before the clicks), -1 padding. Every
point gets the random Fourier encoding of its pixel centre plus a learned embedding of its label; a
padding point gets `not_a_point_embed` only. One padding point is always appended. The dense prompt
is a low-res mask logit map (4x the token grid) downscaled x4 by convolutions, or `no_mask_embed`
everywhere. Parameter names follow the released `tracker.sam_prompt_encoder.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3.model.layer_norm_2d import LayerNorm2d
from sam3.model.random_fourier import RandomFourierEncoding

NUM_POINT_LABELS = 4  # 0 negative, 1 positive, 2 box top-left, 3 box bottom-right
PAD_LABEL = -1


class PromptEncoder(nn.Module):
    """Points (with labels) and low-res masks -> sparse and dense prompt embeddings.

    Args:
        d_model: embedding width C.
        image_size: side of the square model input, in pixels (point coordinates are pixels of it).
        feature_stride: pixels per token of the image embedding (the ViT patch size).
        mask_in_chans: hidden channels of the mask downscaler.
    """

    def __init__(self, *, d_model: int, image_size: int, feature_stride: int, mask_in_chans: int = 16) -> None:
        super().__init__()
        if image_size % feature_stride:
            raise ValueError(f"image_size {image_size} is not a multiple of feature_stride {feature_stride}")
        self.d_model = d_model
        self.image_size = image_size
        self.embedding_size = image_size // feature_stride
        self.mask_input_size = 4 * self.embedding_size
        self.pe_layer = RandomFourierEncoding(d_model // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, d_model) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, d_model)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, d_model, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, d_model)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, h, w) encoding of the token grid, the image embedding's position encoding."""
        return self.pe_layer((self.embedding_size, self.embedding_size))[None]

    def forward(
        self, points_xy: torch.Tensor, point_labels: torch.Tensor, mask_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed one prompt set per batch entry.

        Args:
            points_xy: (B, N, 2) float pixel coordinates (x, y) in the model input (0..image_size).
            point_labels: (B, N) int labels in {-1, 0, 1, 2, 3}.
            mask_input: optional (B, 1, 4h, 4w) low-res mask logits, (h, w) the token grid.

        Returns:
            sparse: (B, N + 1, C) point embeddings, the appended padding point last.
            dense: (B, C, h, w) mask embedding (`no_mask_embed` broadcast without a mask).
        """
        batch = points_xy.shape[0]
        pad_xy = points_xy.new_zeros(batch, 1, 2)
        pad_label = point_labels.new_full((batch, 1), PAD_LABEL)
        points_xy = torch.cat([points_xy + 0.5, pad_xy], dim=1)  # B, N+1, 2 (pixel centres)
        labels = torch.cat([point_labels, pad_label], dim=1)[..., None]  # B, N+1, 1
        sparse = self.pe_layer.encode_points(points_xy, self.image_size)  # B, N+1, C
        sparse = torch.where(labels == PAD_LABEL, self.not_a_point_embed.weight, sparse)
        for label, embed in enumerate(self.point_embeddings):
            sparse = torch.where(labels == label, sparse + embed.weight, sparse)

        if mask_input is None:
            size = self.embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, size, size)
        else:
            expected = (self.mask_input_size, self.mask_input_size)
            if tuple(mask_input.shape[-2:]) != expected or mask_input.ndim != 4:
                raise ValueError(
                    f"mask_input must be (B, 1, {expected[0]}, {expected[1]}), got {tuple(mask_input.shape)}"
                )
            dense = self.mask_downscaling(mask_input)
        return sparse, dense
