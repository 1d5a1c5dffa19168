"""Fixed sine position encodings (DETR, "End-to-End Object Detection with Transformers", Sec. A.4).

`PositionEmbeddingSine` encodes a feature map's pixel grid, normalised to (0, 2π], half of the
channels for y and half for x.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of 2-D positions, with no parameters.

    Args:
        num_pos_feats: output channels C (even); C/2 encode y, C/2 encode x.
        temperature: base of the geometric frequency ladder.
        normalize: scale grid coordinates to (0, scale] before encoding.
        scale: the range of normalised coordinates; 2π when None.
    """

    def __init__(
        self,
        num_pos_feats: int,
        *,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (half for y, half for x), got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True; pass normalize=True or scale=None")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._grid_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        """(C/2,) inverse frequencies, each repeated for a sin/cos pair."""
        half = self.num_pos_feats // 2
        dim_t = torch.arange(half, dtype=torch.float32, device=device)
        return self.temperature ** (2 * (dim_t // 2) / half)

    def _encode_1d(self, coords: torch.Tensor) -> torch.Tensor:
        """(...,) coordinates -> (..., C/2) interleaved sin (even channels) and cos (odd channels)."""
        angles = coords[..., None] / self._inv_freq(coords.device)
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode the pixel grid of a feature map.

        Args:
            x: (B, C', H, W) features; only its shape and device are read.

        Returns:
            (B, C, H, W) float32 encodings, y channels first; computed once per (H, W, device).
        """
        h, w = x.shape[-2:]
        key = (h, w, x.device)
        if key not in self._grid_cache:
            self._grid_cache[key] = self._grid(h, w, x.device)
        return self._grid_cache[key][None].expand(x.shape[0], -1, -1, -1)

    @torch.inference_mode(False)  # a normal tensor, usable both in and out of inference mode
    def _grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(C, H, W) encoding of an (H, W) grid."""
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
            x_embed = x_embed / (x_embed[-1:] + eps) * self.scale
        pos_y = self._encode_1d(y_embed)[:, None, :].expand(h, w, -1)  # (H, W, C/2)
        pos_x = self._encode_1d(x_embed)[None, :, :].expand(h, w, -1)  # (H, W, C/2)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).contiguous()  # (C, H, W)
