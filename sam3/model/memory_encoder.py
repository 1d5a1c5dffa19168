"""Memory encoder of the video tracker (SAM 2, "Segment Anything in Images and Videos", Sec. 4).

A frame's memory is its pixel features fused with the predicted mask: the mask is downsampled by
strided convolutions to the feature grid, added to projected features, mixed by two ConvNeXt blocks
and projected to a narrow memory width (64), with a sine position encoding of the result.
Parameter names follow the released checkpoint (`tracker.maskmem_backbone.*`).

The caller prepares the mask (sigmoid or binarisation, then x20 - 10); nothing here applies a sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam3.model.layer_norm_2d import LayerNorm2d
from sam3.model.position_encoding import PositionEmbeddingSine


class MemoryEncoder(nn.Module):
    """Fuses pixel features with a mask into memory features and their position encoding.

    Args:
        d_model: width C of the pixel features (and of the fused map).
        out_dim: width of the memory features.
        mask_downsampler: maps (B, 1, H, W) masks to (B, C, h, w).
        fuser: mixes the fused (B, C, h, w) map.
        position_encoding: encodes the (B, out_dim, h, w) output grid.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        out_dim: int = 64,
        mask_downsampler: MaskDownSampler,
        fuser: Fuser,
        position_encoding: PositionEmbeddingSine,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(d_model, d_model, kernel_size=1)
        self.fuser = fuser
        self.out_proj = nn.Conv2d(d_model, out_dim, kernel_size=1)
        self.position_encoding = position_encoding

    def forward(self, pix_feat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one frame's memory per object.

        Args:
            pix_feat: (B, C, h, w) pixel features of the frame (the lowest-resolution level).
            mask: (B, 1, H, W) prepared mask input (e.g. binary or sigmoid mask x20 - 10), any size;
                resized to the downsampler's `interpol_size`.

        Returns:
            features: (B, out_dim, h, w) memory features.
            pos: (B, out_dim, h, w) their sine position encoding, in the features' dtype.
        """
        masks = self.mask_downsampler(mask)  # B, C, h, w
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))  # B, out_dim, h, w
        return x, self.position_encoding(x).to(x.dtype)


class MaskDownSampler(nn.Module):
    """Resizes a mask, then shrinks it by `total_stride` with conv / LayerNorm2d / GELU stages.

    Each stage divides the side by `stride` and multiplies the channels by `stride**2` (1 -> 4 -> 16 ->
    64 -> 256 for stride 2, total 16); a final 1x1 conv maps to `embed_dim`. Module indices in
    `encoder` match the checkpoint (`encoder.{0,1,3,4,...,12}`).

    Args:
        embed_dim: output channels.
        kernel_size: kernel of the strided convs.
        stride: stride of each stage.
        padding: padding of the strided convs.
        total_stride: overall downsampling factor, a power of `stride`.
        interpol_size: (H, W) the mask is first resized to (bilinear, antialiased); 16 * image_size / 14
            (1152 at 1008 px, 256 at 224 px) so that the output matches the feature grid. None: no resize.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        total_stride: int = 16,
        interpol_size: tuple[int, int] | None = (1152, 1152),
    ) -> None:
        super().__init__()
        num_stages = round(math.log(total_stride, stride))
        if stride**num_stages != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        self.interpol_size = None if interpol_size is None else tuple(int(s) for s in interpol_size)
        layers: list[nn.Module] = []
        in_chans = 1
        for _ in range(num_stages):
            out_chans = in_chans * stride**2
            layers += [
                nn.Conv2d(in_chans, out_chans, kernel_size=kernel_size, stride=stride, padding=padding),
                LayerNorm2d(out_chans),
                nn.GELU(),
            ]
            in_chans = out_chans
        layers.append(nn.Conv2d(in_chans, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, embed_dim, H' / total_stride, W' / total_stride), H', W' = interpol_size."""
        if self.interpol_size is not None and tuple(mask.shape[-2:]) != self.interpol_size:
            resized = F.interpolate(
                mask.float(), size=self.interpol_size, mode="bilinear", align_corners=False, antialias=True
            )
            mask = resized.to(mask.dtype)
        return self.encoder(mask)


class Fuser(nn.Module):
    """A stack of ConvNeXt blocks applied to the fused (B, C, h, w) map.

    Args:
        dim: channels C.
        num_layers: number of blocks.
        kernel_size: depthwise kernel of each block.
        layer_scale_init: initial value of each block's per-channel output scale `gamma`.
    """

    def __init__(
        self, *, dim: int = 256, num_layers: int = 2, kernel_size: int = 7, layer_scale_init: float = 1e-6
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNeXtBlock(dim=dim, kernel_size=kernel_size, layer_scale_init=layer_scale_init)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        for layer in self.layers:
            x = layer(x)
        return x


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al., 2022): depthwise conv, LayerNorm2d, 4x MLP, layer scale, residual.

    Args:
        dim: channels C.
        kernel_size: depthwise kernel (odd; padded to keep the size).
        layer_scale_init: initial value of `gamma`.
    """

    def __init__(self, *, dim: int, kernel_size: int = 7, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # B, h, w, C
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)  # B, C, h, w


def build_memory_encoder(
    *, d_model: int = 256, out_dim: int = 64, image_size: int = 1008, patch_size: int = 14
) -> MemoryEncoder:
    """SAM3's memory encoder for `image_size` px input: the mask is resized to 16 * image_size / patch_size."""
    side = 16 * image_size // patch_size
    return MemoryEncoder(
        d_model=d_model,
        out_dim=out_dim,
        mask_downsampler=MaskDownSampler(embed_dim=d_model, interpol_size=(side, side)),
        fuser=Fuser(dim=d_model),
        position_encoding=PositionEmbeddingSine(out_dim, normalize=True),
    )
