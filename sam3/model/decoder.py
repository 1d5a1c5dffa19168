"""Query decoder of the grounding head (SAM3 paper, "Detector": DETR-like decoder with presence token).

`Q` learned queries, each with a learned reference box, are refined over the decoder layers:
self-attention among the queries and a learned presence token, cross-attention to the prompt tokens,
cross-attention to the fused image tokens with a box relative position bias ("log" mode: an MLP over
log-scaled distances between every image row/column and the query's current box edges), then a ReLU
FFN (post-norm). After each layer the box head predicts an offset of the reference box in logit space
(iterative refinement; the next layer sees the refined box detached). The presence token's head gives
one logit per (frame, prompt) pair and layer.

In training with `use_dac`, a second copy of the queries (the one-to-many set, DAC-DETR) runs beside
the first: it skips the self-attention but shares every other step and all weights.

Deviation kept on purpose for checkpoint parity: like the released model, presence logits are not
clamped (its clamp call discards its result).
Parameter names follow the SAM3 checkpoint (`transformer.decoder.*`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3.model.mlp import MLP
from sam3.ops.boxes import box_cxcywh_to_xyxy


@dataclass
class DecoderOutput:
    """Per-layer decoder outputs, layer-major (D decoder layers, Qt = Q, or 2Q with the o2m set).

    Attributes:
        queries: (D, B, Qt, C) normalised query embeddings after every layer.
        boxes_cxcywh: (D, B, Qt, 4) predicted boxes after every layer, normalised cxcywh.
        presence_logits: (D, B, 1) presence logit after every layer.
        presence_feats: (B, 1, C) the presence token after the last layer (before its norm).
    """

    queries: torch.Tensor
    boxes_cxcywh: torch.Tensor
    presence_logits: torch.Tensor
    presence_feats: torch.Tensor


class DecoderLayer(nn.Module):
    """One decoder layer (post-norm): query self-attention, prompt and image cross-attention, FFN.

    Args:
        d_model: token width C.
        num_heads: attention heads.
        dim_feedforward: FFN hidden width.
        dropout: dropout probability.
    """

    def __init__(self, *, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ca_text = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.catext_norm = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        num_self_attn: int,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Updates the presence token and the queries.

        Args:
            queries: (B, 1 + Qt, C) presence token first, then the queries.
            query_pos: (B, 1 + Qt, C) query position embeddings (zeros for the presence token).
            num_self_attn: how many leading tokens take part in self-attention (1 + Q; the o2m set
                after them skips it).
            prompt: (B, L, C) prompt tokens.
            prompt_mask: (B, L) bool, True marks padding.
            memory: (B, H*W, C) fused image tokens.
            memory_pos: (B, H*W, C) their position encodings.
            memory_bias: (B * heads, 1 + Qt, H*W) additive attention bias (box RPB).

        Returns:
            (B, 1 + Qt, C) updated tokens.
        """
        x = queries[:, :num_self_attn]
        qk = x + query_pos[:, :num_self_attn]
        x = x + self.dropout(self.self_attn(qk, qk, x, need_weights=False)[0])
        x = self.norm2(torch.cat([x, queries[:, num_self_attn:]], dim=1))
        h = self.ca_text(x + query_pos, prompt, prompt, key_padding_mask=prompt_mask, need_weights=False)[0]
        x = self.catext_norm(x + self.dropout(h))
        h = self.cross_attn(x + query_pos, memory + memory_pos, memory, attn_mask=memory_bias, need_weights=False)[0]
        x = self.norm1(x + self.dropout(h))
        h = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout(h))


class QueryDecoder(nn.Module):
    """Decoder with learned queries, iterative box refinement, box RPB and a presence token.

    Args:
        num_layers: number of decoder layers D.
        d_model: width C.
        num_heads: attention heads.
        dim_feedforward: FFN hidden width.
        dropout: dropout probability.
        num_queries: Q learned queries (the one-to-one set).
        use_dac: in training, run a one-to-many copy of the queries that skips self-attention.
        use_act_checkpoint: recompute layer activations in the backward pass when training.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        num_queries: int,
        use_dac: bool = True,
        use_act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model=d_model, num_heads=num_heads, dim_feedforward=dim_feedforward, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.bbox_embed = MLP(input_dim=d_model, hidden_dim=d_model, output_dim=4, num_layers=3)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.reference_points = nn.Embedding(num_queries, 4)
        self.boxRPB_embed_x = MLP(input_dim=2, hidden_dim=d_model, output_dim=num_heads, num_layers=2)
        self.boxRPB_embed_y = MLP(input_dim=2, hidden_dim=d_model, output_dim=num_heads, num_layers=2)
        self.presence_token = nn.Embedding(1, d_model)
        self.presence_token_head = MLP(input_dim=d_model, hidden_dim=d_model, output_dim=1, num_layers=3)
        self.presence_token_out_norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(input_dim=2 * d_model, hidden_dim=d_model, output_dim=d_model, num_layers=2)
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.use_dac = use_dac
        self.use_act_checkpoint = use_act_checkpoint
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)  # refinement starts from the reference boxes
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def forward(
        self,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        feat_size: tuple[int, int],
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> DecoderOutput:
        """Decodes boxes and presence for every pair.

        Args:
            memory: (B, H*W, C) fused image tokens (B = pairs).
            memory_pos: (B, H*W, C) their position encodings.
            feat_size: (H, W) of the image token grid.
            prompt: (B, L, C) prompt tokens.
            prompt_mask: (B, L) bool, True marks padding.

        Returns:
            `DecoderOutput`; in training with `use_dac` the query axis holds Q one-to-one queries
            followed by Q one-to-many queries.
        """
        batch = memory.shape[0]
        copies = 2 if (self.use_dac and self.training) else 1
        queries = self.query_embed.weight.repeat(copies, 1)[None].expand(batch, -1, -1)  # B, Qt, C
        ref = self.reference_points.weight.repeat(copies, 1)[None].expand(batch, -1, -1).sigmoid()  # B, Qt, 4
        presence = self.presence_token.weight[None].expand(batch, -1, -1)  # B, 1, C
        ref_for_output = ref
        all_queries, all_boxes, all_presence = [], [], []
        for layer in self.layers:
            query_pos = self.ref_point_head(_sine_embed_boxes(ref, self.d_model))  # B, Qt, C
            query_pos = torch.cat([torch.zeros_like(query_pos[:, :1]), query_pos], dim=1)  # B, 1+Qt, C
            bias = self._box_rpb(ref, feat_size)  # B, heads, Qt, HW
            bias = F.pad(bias, (0, 0, 1, 0)).flatten(0, 1)  # B*heads, 1+Qt, HW
            tokens = torch.cat([presence, queries], dim=1)
            args = (tokens, query_pos, 1 + self.num_queries, prompt, prompt_mask, memory, memory_pos, bias)
            if self.use_act_checkpoint and self.training:
                tokens = checkpoint(layer, *args, use_reentrant=False)
            else:
                tokens = layer(*args)
            presence, queries = tokens[:, :1], tokens[:, 1:]
            normed = self.norm(queries)
            delta = self.bbox_embed(normed)
            # Same value twice; the gradient of a layer's output box reaches this layer's and the
            # previous layer's box head (as in the released model), the next layer's input does not.
            boxes = (_inverse_sigmoid(ref_for_output) + delta).sigmoid()
            ref_for_output = (_inverse_sigmoid(ref) + delta).sigmoid()
            ref = ref_for_output.detach()
            all_queries.append(normed)
            all_boxes.append(boxes)
            all_presence.append(self.presence_token_head(self.presence_token_out_norm(presence)).squeeze(-1))
        return DecoderOutput(
            queries=torch.stack(all_queries),
            boxes_cxcywh=torch.stack(all_boxes),
            presence_logits=torch.stack(all_presence),
            presence_feats=presence,
        )

    def _box_rpb(self, boxes_cxcywh: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """Box relative position bias, "log" mode.

        Args:
            boxes_cxcywh: (B, Qt, 4) current reference boxes, normalised.
            feat_size: (H, W) of the image token grid.

        Returns:
            (B, heads, Qt, H*W) additive attention bias.
        """
        height, width = feat_size
        boxes = box_cxcywh_to_xyxy(boxes_cxcywh)
        ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) / height
        xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) / width
        dy = ys[None, None, :, None] - boxes[:, :, None, 1::2]  # B, Qt, H, 2
        dx = xs[None, None, :, None] - boxes[:, :, None, 0::2]  # B, Qt, W, 2
        bias_y = self.boxRPB_embed_y(_log_scale(dy))  # B, Qt, H, heads
        bias_x = self.boxRPB_embed_x(_log_scale(dx))  # B, Qt, W, heads
        bias = bias_y[:, :, :, None] + bias_x[:, :, None, :]  # B, Qt, H, W, heads
        return bias.flatten(2, 3).permute(0, 3, 1, 2).contiguous()  # B, heads, Qt, HW


def _log_scale(delta: torch.Tensor) -> torch.Tensor:
    """Signed log2 scaling of normalised distances: maps [-1, 1] to about [-1.06, 1.06]."""
    delta = delta * 8
    return torch.sign(delta) * torch.log2(delta.abs() + 1.0) / math.log2(8)


def _inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Logit of `x` clamped to [eps, 1 - eps] (the released model's box-refinement convention)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _sine_embed_boxes(boxes_cxcywh: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sine embedding of boxes: (..., 4) cxcywh in [0, 1] -> (..., 2 * d_model), ordered (y, x, w, h)."""
    num_feats = d_model // 2
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes_cxcywh.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    parts = []
    for coord in (1, 0, 2, 3):
        pos = boxes_cxcywh[..., coord, None] * (2 * math.pi) / dim_t  # ..., num_feats
        parts.append(torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2))
    return torch.cat(parts, dim=-1)
