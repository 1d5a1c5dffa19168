"""SAM mask decoder, SAM2 variant ("SAM 2", Sec. 4 and App. D): output tokens (object score, IoU, 4 mask
tokens) are prepended to the prompt tokens, a two-way transformer attends them with the image
embedding, the image tokens are upsampled x4 with the second pyramid's 2x and 4x levels added
(`conv_s1`, `conv_s0` project them), and each mask token's hypernetwork MLP gives the weights of a dot
product with the upsampled map. Token 0 is the single-mask output, tokens 1-3 the multimask outputs.

Parameter names follow the released `tracker.sam_mask_decoder.*`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam3.model.layer_norm_2d import LayerNorm2d
from sam3.model.mlp import MLP
from sam3.model.two_way_transformer import TwoWayTransformer


@dataclass
class DecodedMasks:
    """All four mask tokens' outputs, before any selection.

    Attributes:
        masks: (B, 4, 4h, 4w) mask logits, (h, w) the token grid.
        iou: (B, 4) predicted IoU in [0, 1].
        mask_tokens: (B, 4, C) the mask tokens after the transformer.
        object_score_logits: (B, 1) logit that the object is present.
    """

    masks: torch.Tensor
    iou: torch.Tensor
    mask_tokens: torch.Tensor
    object_score_logits: torch.Tensor


class MaskDecoder(nn.Module):
    """Image embedding + prompt embeddings -> mask logits, predicted IoU and object score.

    Args:
        d_model: width C of tokens and image embedding.
        transformer: the two-way transformer.
        num_multimask_outputs: multimask tokens (the single-mask token comes on top).
        iou_head_depth: layers of the IoU head.
        iou_head_hidden_dim: hidden width of the IoU head.
        stability_delta: logit offset of the stability score (|mask > delta| / |mask > -delta|).
        stability_thresh: a single mask less stable than this is replaced by the best multimask output.
    """

    def __init__(
        self,
        *,
        d_model: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d_model)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d_model)
        self.obj_score_token = nn.Embedding(1, d_model)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d_model, d_model // 4, kernel_size=2, stride=2),
            LayerNorm2d(d_model // 4),
            nn.GELU(),
            nn.ConvTranspose2d(d_model // 4, d_model // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(d_model, d_model // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d_model, d_model // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(input_dim=d_model, hidden_dim=d_model, output_dim=d_model // 8, num_layers=3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            input_dim=d_model,
            hidden_dim=iou_head_hidden_dim,
            output_dim=self.num_mask_tokens,
            num_layers=iou_head_depth,
        )
        self.pred_obj_score_head = MLP(input_dim=d_model, hidden_dim=d_model, output_dim=1, num_layers=3)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def forward(
        self,
        image_embed: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res_feats: tuple[torch.Tensor, torch.Tensor],
    ) -> DecodedMasks:
        """Predict all four masks for B prompt sets on one image.

        Args:
            image_embed: (1, C, h, w) or (B, C, h, w) image embedding; one image is shared by all B.
            image_pe: (1, C, h, w) its position encoding.
            sparse: (B, N, C) prompt tokens.
            dense: (B, C, h, w) dense prompt embedding.
            high_res_feats: (1 or B, C/8, 4h, 4w) `conv_s0` and (1 or B, C/4, 2h, 2w) `conv_s1` features.

        Returns:
            `DecodedMasks` of the four mask tokens.
        """
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse], dim=1)  # B, 2 + M + N, C
        src = image_embed.expand(batch, -1, -1, -1) + dense  # B, C, h, w
        pos = image_pe.expand(batch, -1, -1, -1)
        b, c, h, w = src.shape
        tokens_out, src = self.transformer(src, pos, tokens)
        mask_tokens = tokens_out[:, 2 : 2 + self.num_mask_tokens]  # B, M, C
        src = src.transpose(1, 2).reshape(b, c, h, w)

        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_feats
        upscaled = act1(norm1(deconv1(src) + feat_s1))  # B, C/4, 2h, 2w
        upscaled = act2(deconv2(upscaled) + feat_s0)  # B, C/8, 4h, 4w
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).unflatten(-1, upscaled.shape[-2:])  # B, M, 4h, 4w
        iou = self.iou_prediction_head(tokens_out[:, 1]).sigmoid()  # B, M
        object_score_logits = self.pred_obj_score_head(tokens_out[:, 0])  # B, 1
        return DecodedMasks(masks=masks, iou=iou, mask_tokens=mask_tokens, object_score_logits=object_score_logits)

    def select(self, decoded: DecodedMasks, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The returned masks: tokens 1-3, or token 0 unless it is unstable (then the best of 1-3 by IoU).

        Returns:
            masks: (B, 3 or 1, 4h, 4w) logits; iou: (B, 3 or 1).
        """
        if multimask_output:
            return decoded.masks[:, 1:], decoded.iou[:, 1:]
        single, single_iou = decoded.masks[:, :1], decoded.iou[:, :1]
        best = decoded.iou[:, 1:].argmax(dim=-1) + 1  # B
        rows = torch.arange(best.shape[0], device=best.device)
        best_mask, best_iou = decoded.masks[rows, best][:, None], decoded.iou[rows, best][:, None]
        stable = self.stability_score(single) >= self.stability_thresh  # B, 1
        return torch.where(stable[..., None, None], single, best_mask), torch.where(stable, single_iou, best_iou)

    def stability_score(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) logits -> (B, K) area above +delta over area above -delta (1 where both are 0)."""
        inner = (masks > self.stability_delta).flatten(-2).sum(-1).float()
        outer = (masks > -self.stability_delta).flatten(-2).sum(-1).float()
        return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))
