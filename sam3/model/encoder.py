"""Fusion encoder of the grounding head (SAM3 paper, "Detector": the encoder fusing image and prompt).

Each (frame, prompt) pair gets its own copy of the frame's image tokens, which attend to themselves
(with sine position encodings) and then to the pair's prompt tokens (text followed by geometry).
Layers are pre-norm with a ReLU FFN. The prompt tokens pass through unchanged.

`PromptedAttentionLayer` is also the layer of the geometry encoder, where the roles swap: prompt tokens
attend to themselves and then to the image tokens (position encodings added to the image keys).
Parameter names (`self_attn`, `cross_attn_image`, `linear1/2`, `norm1/2/3`) follow the SAM3 checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class PromptedAttentionLayer(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to a memory, ReLU FFN (each residual).

    Args:
        d_model: token width C.
        num_heads: attention heads.
        dim_feedforward: FFN hidden width.
        dropout: dropout on attention weights and residual branches.
        pos_in_self_attn: add the token position encoding to self-attention queries and keys.
        pos_in_cross_attn_keys: add the memory position encoding to cross-attention keys.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        pos_in_self_attn: bool,
        pos_in_cross_attn_keys: bool,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn_image = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pos_in_self_attn = pos_in_self_attn
        self.pos_in_cross_attn_keys = pos_in_cross_attn_keys

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        x_pos: torch.Tensor | None = None,
        x_padding_mask: torch.Tensor | None = None,
        memory_pos: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Updates the tokens `x`.

        Args:
            x: (B, N, C) tokens.
            memory: (B, M, C) tokens to cross-attend to.
            x_pos: (B, N, C) position encoding of `x` (used when `pos_in_self_attn`).
            x_padding_mask: (B, N) bool, True marks padding keys of the self-attention.
            memory_pos: (B, M, C) position encoding of `memory` (used when `pos_in_cross_attn_keys`).
            memory_padding_mask: (B, M) bool, True marks padding memory tokens.

        Returns:
            (B, N, C) updated tokens.
        """
        h = self.norm1(x)
        qk = h + x_pos if self.pos_in_self_attn else h
        h = self.self_attn(qk, qk, h, key_padding_mask=x_padding_mask, need_weights=False)[0]
        x = x + self.dropout(h)
        h = self.norm2(x)
        keys = memory + memory_pos if self.pos_in_cross_attn_keys else memory
        h = self.cross_attn_image(h, keys, memory, key_padding_mask=memory_padding_mask, need_weights=False)[0]
        x = x + self.dropout(h)
        h = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(x)))))
        return x + self.dropout(h)


class FusionEncoder(nn.Module):
    """Stack of `PromptedAttentionLayer`s fusing image tokens with prompt tokens (`transformer.encoder`).

    Args:
        num_layers: number of layers.
        d_model: token width C.
        num_heads: attention heads.
        dim_feedforward: FFN hidden width.
        dropout: dropout probability.
        use_act_checkpoint: recompute each layer's activations in the backward pass when training.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        use_act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PromptedAttentionLayer(
                d_model=d_model,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                pos_in_self_attn=True,
                pos_in_cross_attn_keys=False,
            )
            for _ in range(num_layers)
        )
        self.d_model = d_model
        self.use_act_checkpoint = use_act_checkpoint

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_pos: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Fuses every pair's image tokens with its prompt.

        Args:
            image_tokens: (Npairs, H*W, C) image tokens of each pair's frame, row-major.
            image_pos: (Npairs, H*W, C) sine position encodings of those tokens.
            prompt: (Npairs, L, C) prompt tokens (text then geometry).
            prompt_mask: (Npairs, L) bool, True marks padding prompt tokens.

        Returns:
            (Npairs, H*W, C) fused image tokens (the encoder hidden states).
        """
        x = image_tokens
        for layer in self.layers:
            if self.use_act_checkpoint and self.training:
                x = checkpoint(layer, x, prompt, image_pos, None, None, prompt_mask, use_reentrant=False)
            else:
                x = layer(x, prompt, x_pos=image_pos, memory_padding_mask=prompt_mask)
        return x
