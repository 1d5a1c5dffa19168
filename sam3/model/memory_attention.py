"""Memory attention of the video tracker (SAM 2, "Segment Anything in Images and Videos", Sec. 4).

Conditions the current frame's pixel tokens on the memory bank: a stack of pre-norm layers, each with
self-attention over the frame, cross-attention to the memories (spatial memories of past frames, then
object-pointer tokens) and an MLP, followed by a final LayerNorm. Positions enter through 2-D axial
RoPE (unscaled grid coordinates) on queries and keys; the memories' keys reuse the frame grid's table
once per memory frame and the pointer tokens get none. Parameter names follow the released checkpoint
(`tracker.transformer.encoder.*`); the RoPE tables are derived, not stored.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class MemoryAttention(nn.Module):
    """Current-frame tokens attend to themselves and to the memory bank.

    Args:
        d_model: width C of the frame tokens.
        memory_dim: width of the memory tokens (keys / values of the cross-attention).
        num_layers: number of layers.
        num_heads: attention heads (self and cross).
        dim_feedforward: hidden width of the ReLU MLP.
        dropout: dropout on attention weights, residual branches and MLP (training only).
        rope_theta: RoPE frequency base.
        feat_sizes: (h, w) grid whose RoPE table is built up front (72x72 at 1008 px); other grids
            get theirs on first use.
        pos_scale_at_input: weight of the frame's position encoding added to its tokens at the input.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        memory_dim: int = 64,
        num_layers: int = 4,
        num_heads: int = 1,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        rope_theta: float = 1e4,
        feat_sizes: tuple[int, int] = (72, 72),
        pos_scale_at_input: float = 0.1,
    ) -> None:
        super().__init__()
        head_dim = d_model // num_heads
        if head_dim * num_heads != d_model or head_dim % 4:
            raise ValueError(f"d_model {d_model} / {num_heads} heads must give a head dim divisible by 4 for 2-D RoPE")
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.pos_scale_at_input = pos_scale_at_input
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(
                d_model=d_model,
                memory_dim=memory_dim,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self._rope_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._rope_table(tuple(feat_sizes), self.norm.weight.device)  # the native grid, built up front

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        *,
        num_obj_ptr_tokens: int,
        feat_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Condition the frame on its memories.

        Args:
            curr: (B, h*w, C) frame tokens, row-major over the (h, w) grid; B = objects.
            curr_pos: (B, h*w, C) their position encoding (used only at the input).
            memory: (B, M, memory_dim) memory tokens: k spatial memories of h*w tokens each, then
                `num_obj_ptr_tokens` object-pointer tokens (M = k*h*w + num_obj_ptr_tokens).
            memory_pos: (B, M, memory_dim) their position (and temporal) encodings, added to the keys.
            num_obj_ptr_tokens: trailing memory tokens that get no RoPE.
            feat_hw: (h, w) of the frame grid.

        Returns:
            (B, h*w, C) memory-conditioned frame tokens (after the final LayerNorm).
        """
        h, w = feat_hw
        if curr.shape[1] != h * w:
            raise ValueError(f"curr has {curr.shape[1]} tokens, the {h}x{w} grid needs {h * w}")
        num_spatial = memory.shape[1] - num_obj_ptr_tokens
        if num_spatial < 0 or num_spatial % (h * w):
            raise ValueError(
                f"memory has {memory.shape[1]} tokens: {num_obj_ptr_tokens} pointer tokens leave {num_spatial}, "
                f"not a whole number of {h}x{w} frames"
            )
        table = self._rope_table((h, w), curr.device)
        x = curr + self.pos_scale_at_input * curr_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, rope=table, num_k_exclude_rope=num_obj_ptr_tokens)
        return self.norm(x)

    def _rope_table(self, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(h*w, head_dim/2) complex table for an (h, w) grid, cached per grid and device."""
        key = (*hw, device)
        if key not in self._rope_cache:
            logger.debug("memory-attention RoPE table for a %dx%d grid on %s", *hw, device)
            with torch.inference_mode(False):  # a normal tensor, usable in and out of inference mode
                self._rope_cache[key] = axial_rope_table(self.head_dim, *hw, theta=self.rope_theta, device=device)
        return self._rope_cache[key]


class MemoryAttentionLayer(nn.Module):
    """Pre-norm layer: RoPE self-attention, RoPE cross-attention to memories, ReLU MLP; each residual.

    Args:
        d_model: width C of the frame tokens.
        memory_dim: width of the memory tokens.
        num_heads: attention heads.
        dim_feedforward: hidden width of the MLP.
        dropout: dropout rate (training only).
    """

    def __init__(self, *, d_model: int, memory_dim: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim=d_model, kv_dim=d_model, num_heads=num_heads, dropout=dropout)
        self.cross_attn_image = RoPEAttention(dim=d_model, kv_dim=memory_dim, num_heads=num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        *,
        rope: torch.Tensor,
        num_k_exclude_rope: int,
    ) -> torch.Tensor:
        """(B, L, C) frame tokens, (B, M, memory_dim) memory and its position -> (B, L, C)."""
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, y, rope=rope))
        y = self.norm2(x)
        y = self.cross_attn_image(y, memory + memory_pos, memory, rope=rope, num_k_exclude_rope=num_k_exclude_rope)
        x = x + self.dropout(y)
        y = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(x)))))
        return x + self.dropout(y)


class RoPEAttention(nn.Module):
    """Multi-head attention with axial RoPE on queries and keys (`q_proj`, `k_proj`, `v_proj`, `out_proj`).

    Keys longer than the queries are a whole number of query grids (memory frames), each rotated with
    the query table, followed by `num_k_exclude_rope` unrotated tokens.

    Args:
        dim: query width (and internal width).
        kv_dim: key / value input width.
        num_heads: heads.
        dropout: attention dropout (training only).
    """

    def __init__(self, *, dim: int, kv_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        rope: torch.Tensor,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        """(B, L, dim) queries, (B, M, kv_dim) keys and values, (L, head_dim/2) table -> (B, L, dim)."""
        q = self._split_heads(self.q_proj(q))  # B, heads, L, head_dim
        k = self._split_heads(self.k_proj(k))  # B, heads, M, head_dim
        v = self._split_heads(self.v_proj(v))  # B, heads, M, head_dim
        num_rope = k.shape[2] - num_k_exclude_rope
        q = _rotate(q, rope)
        k_rope = _rotate(k[:, :, :num_rope], rope.repeat(num_rope // rope.shape[0], 1))
        k = torch.cat((k_rope, k[:, :, num_rope:]), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).flatten(2)  # B, L, dim
        return self.out_proj(out)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, heads, N, dim / heads)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)


def axial_rope_table(
    dim: int, h: int, w: int, *, theta: float = 1e4, device: torch.device | None = None
) -> torch.Tensor:
    """Complex 2-D RoPE table for an (h, w) grid in row-major token order: (h*w, dim/2) complex64.

    The first dim/4 pairs rotate with the column index, the last dim/4 with the row index, both with
    frequencies theta ** (-4i / dim).
    """
    freqs = 1.0 / theta ** (torch.arange(0, dim, 4, device=device)[: dim // 4].float() / dim)
    t = torch.arange(h * w, dtype=torch.float32, device=device)
    t_x, t_y = t % w, torch.div(t, w, rounding_mode="floor")
    angles = torch.cat((torch.outer(t_x, freqs), torch.outer(t_y, freqs)), dim=-1)  # h*w, dim/2
    return torch.polar(torch.ones_like(angles), angles)


def _rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of (B, heads, N, D) by an (N, D/2) complex table, in float32."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # B, heads, N, D/2
    return torch.view_as_real(pairs * table).flatten(-2).type_as(x)
