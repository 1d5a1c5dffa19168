"""LayerNorm over the channels of a (B, C, H, W) map, as SAM's convolutional heads use it."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """Normalises every pixel's C channels, then scales and shifts per channel.

    Args:
        num_channels: C.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
