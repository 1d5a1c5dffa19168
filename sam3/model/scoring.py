"""Dot-product scoring of decoder queries against the pooled prompt (SAM3 paper, "Detector").

The prompt tokens go through a residual MLP with an output LayerNorm, are mean-pooled over the valid
tokens and projected; every query is projected and scored by a scaled dot product with the pooled
prompt. Logits are clamped to +-`clamp_value`. Parameter names follow `dot_prod_scoring.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3.model.mlp import MLP


class DotProductScoring(nn.Module):
    """Per-query class logits from the prompt.

    Args:
        d_model: width C of queries and prompt tokens.
        d_proj: width of the shared projection space.
        mlp_hidden_dim: hidden width of the prompt MLP.
        dropout: dropout inside the prompt MLP.
        clamp_value: logits are clamped to [-clamp_value, clamp_value].
    """

    def __init__(
        self, *, d_model: int, d_proj: int, mlp_hidden_dim: int, dropout: float, clamp_value: float = 12.0
    ) -> None:
        super().__init__()
        self.prompt_mlp = MLP(
            input_dim=d_model,
            hidden_dim=mlp_hidden_dim,
            output_dim=d_model,
            num_layers=2,
            dropout=dropout,
            residual=True,
            out_norm=True,
        )
        self.prompt_proj = nn.Linear(d_model, d_proj)
        self.hs_proj = nn.Linear(d_model, d_proj)
        self.scale = d_proj**-0.5
        self.clamp_value = clamp_value

    def forward(self, queries: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Scores queries of every decoder layer.

        Args:
            queries: (D, B, Q, C) query embeddings (D decoder layers, B pairs).
            prompt: (B, L, C) prompt tokens.
            prompt_mask: (B, L) bool, True marks padding.

        Returns:
            (D, B, Q, 1) logits in [-clamp_value, clamp_value].
        """
        prompt = self.prompt_mlp(prompt)
        valid = (~prompt_mask).to(prompt.dtype)[..., None]  # B, L, 1
        pooled = (prompt * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)  # B, C
        pooled = self.prompt_proj(pooled)  # B, d_proj
        scores = torch.matmul(self.hs_proj(queries), pooled[:, :, None]) * self.scale  # D, B, Q, 1
        return scores.clamp(min=-self.clamp_value, max=self.clamp_value)
