"""Small multi-layer perceptron used by the grounding head (box, presence, mask-embedding, RPB heads).

Parameter names (`layers.{i}`, `out_norm`) follow the released SAM3 checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them, optional residual and output norm.

    Args:
        input_dim: input width.
        hidden_dim: width of every hidden layer.
        output_dim: output width.
        num_layers: number of linear layers (>= 1).
        dropout: dropout after every hidden activation.
        residual: add the input to the output (requires input_dim == output_dim).
        out_norm: apply a LayerNorm(output_dim) last.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        dropout: float = 0.0,
        residual: bool = False,
        out_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs num_layers >= 1, got {num_layers}")
        if residual and input_dim != output_dim:
            raise ValueError(f"residual MLP needs input_dim == output_dim, got {input_dim} != {output_dim}")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual
        self.out_norm = nn.LayerNorm(output_dim) if out_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        y = x
        for i, layer in enumerate(self.layers):
            y = layer(y)
            if i < len(self.layers) - 1:
                y = self.dropout(F.relu(y))
        if self.residual:
            y = y + x
        return self.out_norm(y)
