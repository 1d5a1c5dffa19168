"""Plain ViT image encoder of SAM3 (ViTDet, "Exploring Plain Vision Transformer Backbones for
Object Detection"; SAM3 paper, image encoder).

Patch embedding without bias, an absolute position embedding learned at a pre-training size (with
a class-token slot that is dropped) and tiled over the working token grid, pre-LayerNorm blocks with
2-D axial rotary position encoding (RoPE), windowed attention in most blocks and global attention
in a few, and stochastic depth. Any input whose sides are multiples of the patch size works: RoPE
tables for a new token grid are computed once and cached, and windowed blocks pad to whole windows
(zero tokens after the block's first LayerNorm, attended to without a mask, as in the released model).
Global-attention blocks rescale RoPE positions per axis so any grid spans the window's range.

Speed (CPU inference): on a grid of whole windows the residual stream is kept window by window from the
first block to the last, so only global blocks reorder tokens; float32 linears without autograd go
through oneDNN's inference kernel, with the MLP's GELU fused into it (`_linear`).

Parameter and buffer names follow Meta's released SAM3 checkpoint (`trunk.*` keys). The persistent
`attn.freqs_cis` buffers (complex RoPE tables for the grid the model was configured for) exist for
that reason only; they are recomputed, never learned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


class ViT(nn.Module):
    """ViT trunk returning the last block's feature map.

    Args:
        img_size: input side the persistent RoPE tables are computed for (checkpoint layout);
            other sizes are accepted at run time.
        patch_size: side of the square patches.
        embed_dim: token width C.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / C.
        window_size: side of the attention windows (in tokens) of windowed blocks.
        global_attn_blocks: indices of the blocks that attend over the whole grid.
        pretrain_img_size: input side the absolute position embedding was learned at.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over depth).
        rope_theta: RoPE frequency base.
        use_cls_token_slot: the position embedding has a leading class-token row (dropped).
        patch_bias: the patch embedding convolution has a bias.
        use_act_checkpoint: recompute each block's activations in backward while training.
        in_chans: input channels.
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        global_attn_blocks: Sequence[int],
        pretrain_img_size: int,
        drop_path_rate: float = 0.0,
        rope_theta: float = 10000.0,
        use_cls_token_slot: bool = True,
        patch_bias: bool = False,
        use_act_checkpoint: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        bad = [i for i in global_attn_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_blocks {list(global_attn_blocks)} has indices outside [0, {depth})")
        if img_size % patch_size or pretrain_img_size % patch_size:
            raise ValueError(
                f"img_size {img_size} and pretrain_img_size {pretrain_img_size} must be multiples of "
                f"patch_size {patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.use_act_checkpoint = use_act_checkpoint
        self.use_cls_token_slot = use_cls_token_slot
        self.global_attn_blocks = tuple(global_attn_blocks)
        self.window_size = window_size if len(self.global_attn_blocks) < depth else 0

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, bias=patch_bias)
        pretrain_grid = pretrain_img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid**2 + int(use_cls_token_slot), embed_dim))
        grid = img_size // patch_size
        drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_rates[i],
                    # Windowed blocks see one window; global blocks see the grid, with RoPE
                    # positions rescaled so the grid spans the window's range.
                    window_size=0 if i in self.global_attn_blocks else window_size,
                    rope_grid=grid if i in self.global_attn_blocks else window_size,
                    rope_ref_size=window_size,
                    rope_theta=rope_theta,
                )
                for i in range(depth)
            ]
        )
        self.ln_pre = nn.LayerNorm(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            images: (B, 3, H, W) normalised images; H and W multiples of the patch size.

        Returns:
            (B, C, H / patch, W / patch) features of the last block.
        """
        h_img, w_img = images.shape[-2:]
        if h_img % self.patch_size or w_img % self.patch_size:
            raise ValueError(
                f"image size {h_img}x{w_img} is not a multiple of the patch size {self.patch_size}: "
                f"resize or crop to e.g. {h_img // self.patch_size * self.patch_size}x"
                f"{w_img // self.patch_size * self.patch_size}"
            )
        x = self.patch_embed(images)  # (B, h, w, C)
        x = x + self._tiled_pos_embed(x.shape[1], x.shape[2])
        x = self.ln_pre(x)
        h, w = x.shape[1:3]
        # On a grid of whole windows the residual stream stays window by window throughout (every
        # op but global attention is per token): one partition here instead of one per windowed block.
        windowed = self.window_size > 0 and h % self.window_size == 0 and w % self.window_size == 0
        if windowed:
            x, _ = _window_partition(x, self.window_size)  # (B*nW, ws, ws, C)
        grid_hw = (h, w) if windowed else None
        for block in self.blocks:
            if self.use_act_checkpoint and self.training:
                x = checkpoint(block, x, grid_hw, use_reentrant=False)
            else:
                x = block(x, grid_hw)
        if windowed:
            x = _window_unpartition(x, self.window_size, (h, w), (h, w))  # (B, h, w, C)
        return x.permute(0, 3, 1, 2)  # (B, C, h, w)

    def _tiled_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Absolute position embedding tiled (not interpolated) over an (h, w) grid: (1, h, w, C)."""
        table = self.pos_embed[:, 1:] if self.use_cls_token_slot else self.pos_embed
        side = int(round(table.shape[1] ** 0.5))
        table = table.reshape(1, side, side, -1)  # (1, s, s, C)
        reps_h, reps_w = -(-h // side), -(-w // side)
        return table.repeat(1, reps_h, reps_w, 1)[:, :h, :w]  # (1, h, w, C)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, h, w, C)


class Block(nn.Module):
    """Pre-norm transformer block, attention windowed when `window_size` > 0."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        window_size: int,
        rope_grid: int,
        rope_ref_size: int,
        rope_theta: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RopeAttention(
            dim=dim, num_heads=num_heads, rope_grid=rope_grid, rope_ref_size=rope_ref_size, rope_theta=rope_theta
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, h, w, C) -> (B, h, w, C); with `grid_hw`, (B*nW, ws, ws, C) windows of an (h, w) grid of
        whole windows of the trunk's window size (window by window, as `_window_partition` orders them)."""
        y = self.norm1(x)
        if grid_hw is not None:
            if self.window_size == 0:  # global attention over the grid the windows tile
                ws = x.shape[1]
                grid = _window_unpartition(y, ws, grid_hw, grid_hw)  # (B, h, w, C)
                y, _ = _window_partition(self.attn(grid), ws)  # (B*nW, ws, ws, C)
            else:
                y = self.attn(y)
        elif self.window_size > 0:
            h, w = x.shape[1:3]
            windows, padded_hw = _window_partition(y, self.window_size)  # (B*nW, ws, ws, C)
            y = _window_unpartition(self.attn(windows), self.window_size, padded_hw, (h, w))
        else:
            y = self.attn(y)
        x = x + _drop_path(y, self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class RopeAttention(nn.Module):
    """Multi-head self-attention over a 2-D token grid with axial RoPE on queries and keys.

    Each head's first half of channels is rotated by the token's column, the second half by its row;
    positions are multiplied by `rope_ref_size / grid side` so that every grid spans the range the
    model was trained on (`rope_grid == rope_ref_size` means unscaled positions).
    """

    def __init__(self, *, dim: int, num_heads: int, rope_grid: int, rope_ref_size: int, rope_theta: float) -> None:
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 4:
            raise ValueError(
                f"width {dim} / {num_heads} heads must give a head dim divisible by 4 for 2-D RoPE, "
                f"got {dim / num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rope_ref_size = rope_ref_size
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rope_grid = rope_grid
        self.register_buffer("freqs_cis", self.rope_table(rope_grid, rope_grid))
        self._rope_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def rope_table(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """Complex RoPE table for an (h, w) grid in row-major token order: (h*w, head_dim / 2) complex64."""
        freqs = 1.0 / (
            self.rope_theta
            ** (torch.arange(0, self.head_dim, 4, device=device)[: self.head_dim // 4].float() / self.head_dim)
        )
        t = torch.arange(h * w, dtype=torch.float32, device=device)
        t_x = (t % w) * (self.rope_ref_size / w)
        t_y = torch.div(t, w, rounding_mode="floor") * (self.rope_ref_size / h)
        angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)  # (h*w, head_dim/2)
        return torch.polar(torch.ones_like(angles), angles)

    def _apply(self, fn, recurse=True):
        # The table is derived, not learned: instead of letting `fn` cast it (`.to(bfloat16)` would
        # drop its imaginary part) or empty it (`to_empty`), rebuild it where the weights went.
        del self._buffers["freqs_cis"]
        super()._apply(fn, recurse)
        self.register_buffer("freqs_cis", self.rope_table(self.rope_grid, self.rope_grid, self.qkv.weight.device))
        self._rope_cache.clear()
        return self

    def rope_table_for_tokens(self, num_tokens: int) -> torch.Tensor:
        """The table this module uses for a square grid of `num_tokens` tokens (checkpoint checks)."""
        side = int(round(num_tokens**0.5))
        if side * side != num_tokens:
            raise ValueError(f"a RoPE table of {num_tokens} rows is not a square token grid")
        return self.rope_table(side, side, self.freqs_cis.device)

    def _table(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(h*w, head_dim/2) complex RoPE table for an (h, w) grid, cached per grid and device."""
        if (h, w) == (self.rope_grid, self.rope_grid) and self.freqs_cis.device == device:
            return self.freqs_cis
        key = (h, w, device)
        if key not in self._rope_cache:
            logger.debug("RoPE table for a %dx%d grid on %s", h, w, device)
            # a normal tensor (inference tensors cannot be saved for backward): one entry serves both modes
            with torch.inference_mode(False):
                self._rope_cache[key] = self.rope_table(h, w, device)
        return self._rope_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) -> (B, h, w, C)."""
        b, h, w, c = x.shape
        qkv = _linear(x, self.qkv).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, h*w, head_dim)
        table = self._table(h, w, x.device)
        q, k = _rotate(q, table), _rotate(k, table)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, h*w, head_dim)
        out = out.transpose(1, 2).reshape(b, h, w, c)  # (B, h, w, C)
        return _linear(out, self.proj)


class Mlp(nn.Module):
    """Two-layer GELU MLP (`fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x, self.fc1):
            return _linear(_linear(x, self.fc1, gelu=True), self.fc2)
        return self.fc2(self.act(self.fc1(x)))


def _use_onednn(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `_linear` may take oneDNN's inference kernel: a plain `nn.Linear` (not one wrapped by an
    adapter, e.g. LoRA, whose forward adds to it), float32 on CPU outside autocast, nothing to differentiate, not traced.

    That kernel (the one inductor uses for frozen CPU graphs) is faster than the BLAS `addmm` behind
    `F.linear` on CPUs where the BLAS library does not pick its best code path, and fuses the GELU.
    """
    return (
        type(layer) is nn.Linear
        and not torch.compiler.is_compiling()  # traced graphs (torch.export, compile) keep portable ops
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")  # autocast casts F.linear's inputs, not this kernel's
        and x.dtype == layer.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
    )


def _linear(x: torch.Tensor, layer: nn.Module, *, gelu: bool = False) -> torch.Tensor:
    """`layer(x)`, then the exact (erf) GELU when `gelu`; oneDNN's fused kernel where `_use_onednn`."""
    if _use_onednn(x, layer):
        return torch.ops.mkldnn._linear_pointwise(
            x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else ""
        )
    y = layer(x)
    return F.gelu(y) if gelu else y


def _rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of (B, heads, L, D) by a (L, D/2) complex table (in float32)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, heads, L, D/2)
    return torch.view_as_real(pairs * table).flatten(-2).type_as(x)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def _window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, h, w, C) -> (B * nW, window, window, C), zero-padding h and w up to whole windows."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def _window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `_window_partition`: (B * nW, window, window, C) -> (B, h, w, C)."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)  # (B, hp, wp, C)
    return x[:, :h, :w].contiguous()
