"""Random Fourier position encoding (Tancik et al., "Fourier Features Let Networks Learn High Frequency
Functions", used by SAM's prompt encoder).

A point p in [0, 1]^2 is mapped to 2p - 1, projected by a fixed Gaussian matrix G (2, C/2), scaled by 2π
and encoded as [sin, cos]. G is a buffer so that the released checkpoint's values load into it
(`positional_encoding_gaussian_matrix`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RandomFourierEncoding(nn.Module):
    """Fourier features of 2-D coordinates with a fixed random projection.

    Args:
        num_pos_feats: half of the output channels C (the projection's width).
        scale: standard deviation of the Gaussian matrix at initialisation.
    """

    def __init__(self, num_pos_feats: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates (x, y) in [0, 1] -> (..., C) features."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix  # ..., C/2
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encodes the pixel centres of an (H, W) grid: (C, H, W)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # H, W, 2 as (x, y)
        return self.encode(grid).permute(2, 0, 1)  # C, H, W

    def encode_points(self, points_xy: torch.Tensor, image_size: int) -> torch.Tensor:
        """(B, N, 2) pixel coordinates of a square `image_size` input -> (B, N, C)."""
        return self.encode(points_xy / image_size)
