"""Two-way transformer of SAM's mask decoder ("Segment Anything", App. A "Lightweight mask decoder").

Prompt tokens and image tokens update each other: each layer runs self-attention on the tokens,
cross-attention tokens -> image, an MLP on the tokens and cross-attention image -> tokens; position
encodings are re-added to queries and keys at every attention. A last token -> image attention follows.
Cross-attentions work at half width (`attention_downsample_rate`). Parameter names follow the released
`tracker.sam_mask_decoder.transformer.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TwoWayTransformer(nn.Module):
    """`depth` two-way layers and a final token -> image attention.

    Args:
        depth: number of two-way layers.
        d_model: token width C.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLP.
        attention_downsample_rate: cross-attentions project to C / rate channels.
    """

    def __init__(
        self, *, depth: int, d_model: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(
                d_model=d_model,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = DownsampledAttention(d_model, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(d_model)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend tokens and image to each other.

        Args:
            image: (B, C, H, W) image embedding (prompt mask embedding already added).
            image_pe: (B, C, H, W) its position encoding.
            tokens: (B, N, C) output and prompt tokens; also their position encoding.

        Returns:
            tokens: (B, N, C) updated tokens.
            image: (B, HW, C) updated image tokens.
        """
        keys = image.flatten(2).transpose(1, 2)  # B, HW, C
        key_pe = image_pe.flatten(2).transpose(1, 2)  # B, HW, C
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys


class TwoWayBlock(nn.Module):
    """Token self-attention, token -> image attention, token MLP, image -> token attention; post-norm.

    Args:
        d_model: width C.
        num_heads: attention heads.
        mlp_dim: hidden width of the MLP.
        attention_downsample_rate: width reduction of the cross-attentions.
        skip_first_layer_pe: the self-attention sees no position encoding and has no residual (layer 0).
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = DownsampledAttention(d_model, num_heads, 1)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn_token_to_image = DownsampledAttention(d_model, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = TokenMLP(d_model, mlp_dim)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm4 = nn.LayerNorm(d_model)
        self.cross_attn_image_to_token = DownsampledAttention(d_model, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) tokens and (B, HW, C) image tokens with their encodings -> updated pair."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class DownsampledAttention(nn.Module):
    """Multi-head attention whose q/k/v projections map C to C / `downsample_rate` channels.

    Args:
        d_model: input and output width C.
        num_heads: heads; must divide C / downsample_rate.
        downsample_rate: width reduction inside the attention.
    """

    def __init__(self, d_model: int, num_heads: int, downsample_rate: int) -> None:
        super().__init__()
        inner = d_model // downsample_rate
        if inner % num_heads:
            raise ValueError(f"{num_heads} heads do not divide {d_model} / {downsample_rate} = {inner} channels")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner)
        self.v_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(inner, d_model)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, Nq, C) queries, (B, Nk, C) keys and values -> (B, Nq, C)."""
        q, k, v = (self._heads(proj(x)) for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        out = F.scaled_dot_product_attention(q, k, v)  # B, heads, Nq, C'/heads
        return self.out_proj(out.transpose(1, 2).flatten(2))  # B, Nq, C

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C') -> (B, heads, N, C'/heads)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class TokenMLP(nn.Module):
    """Linear -> ReLU -> linear on the tokens (`lin1`, `lin2` as released)."""

    def __init__(self, d_model: int, hidden_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(d_model, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        return self.lin2(F.relu(self.lin1(x)))
