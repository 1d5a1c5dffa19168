"""Sam3Image: the single-frame SAM3 grounding model (SAM3 paper, "Detector").

backbone (image pyramid + text encoder) -> prompt = text tokens ++ geometry tokens -> fusion encoder
over the finest-stride-14 image tokens -> query decoder (boxes, presence) -> dot-product scores ->
segmentation head (masks). Everything after the backbone runs per (frame, prompt) pair, batched over
pairs in the caller's order (frame-major for a `ClipBatch`, see `sam3/structures.py`). Images are
encoded once per frame and texts once per distinct text; pairs gather both by index.

Outputs follow `DetectorOutput`: the last decoder layer's predictions, the earlier layers' in
`aux_outputs`, and in training the one-to-many query set (DAC) in `o2m` (with its own aux outputs;
its `presence_logit_dec` is the shared presence logit, the o2m set has no presence token of its own).
"""

from __future__ import annotations

import torch
from torch import nn

from sam3.model.decoder import QueryDecoder
from sam3.model.encoder import FusionEncoder
from sam3.model.geometry_encoder import GeometryEncoder, GeometryPrompts
from sam3.model.scoring import DotProductScoring
from sam3.model.seg_head import SegmentationHead
from sam3.model.tracker import Tracker
from sam3.model.vl_backbone import VLBackbone
from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import ClipBatch, DetectorOutput


class Sam3Image(nn.Module):
    """Single-frame grounding model.

    Args:
        backbone: image pyramid and text encoder (`backbone.*`).
        encoder: fusion encoder (`transformer.encoder.*`).
        decoder: query decoder (`transformer.decoder.*`).
        dot_prod_scoring: query scorer (`dot_prod_scoring.*`).
        geometry_encoder: box / point prompt encoder (`geometry_encoder.*`).
        segmentation_head: mask head (`segmentation_head.*`), or None to skip masks.
        tracker: interactive point / box heads (`tracker.*`) on the neck's `sam2_convs` pyramid, or None.
            Not used by `forward`; see `sam3.interactive`.
    """

    def __init__(
        self,
        *,
        backbone: VLBackbone,
        encoder: FusionEncoder,
        decoder: QueryDecoder,
        dot_prod_scoring: DotProductScoring,
        geometry_encoder: GeometryEncoder,
        segmentation_head: SegmentationHead | None,
        tracker: Tracker | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.geometry_encoder = geometry_encoder
        self.transformer = nn.ModuleDict({"encoder": encoder, "decoder": decoder})
        self.dot_prod_scoring = dot_prod_scoring
        self.segmentation_head = segmentation_head
        self.tracker = tracker

    def parts(self) -> dict[str, nn.Module | None]:
        """The constructor arguments of this model (the modules themselves, not copies)."""
        return {
            "backbone": self.backbone,
            "encoder": self.transformer["encoder"],
            "decoder": self.transformer["decoder"],
            "dot_prod_scoring": self.dot_prod_scoring,
            "geometry_encoder": self.geometry_encoder,
            "segmentation_head": self.segmentation_head,
            "tracker": self.tracker,
        }

    def forward(self, batch: ClipBatch, geometry: GeometryPrompts | None = None) -> DetectorOutput:
        """Runs backbone and grounding on a batch's frames and all their prompts.

        Args:
            batch: images (F, 3, H, W) normalised to [-1, 1], texts, and the (frame, prompt) pairs.
            geometry: optional box / point prompts per pair (in the batch's pair order).

        Returns:
            `DetectorOutput` over the batch's pairs, in pair order.
        """
        vision = self.backbone.forward_image(batch.images)
        text = self.backbone.forward_text(batch.texts)
        return self.forward_grounding(vision, text, batch.pairs.frame_slot, batch.pairs.text_idx, geometry)

    def forward_grounding(
        self,
        vision: dict,
        text: dict,
        pair_frame_slot: torch.Tensor,
        pair_text_idx: torch.Tensor,
        geometry: GeometryPrompts | None = None,
    ) -> DetectorOutput:
        """Runs the grounding head for every (frame, prompt) pair.

        Args:
            vision: `VLBackbone.forward_image` output for F frames: `backbone_fpn` and `vision_pos_enc`,
                lists of (F, C, h_l, w_l) levels, finest first; the last level is the token grid.
            text: `VLBackbone.forward_text` output for T texts: `language_features` (L, T, C),
                `language_mask` (T, L) bool (True = padding).
            pair_frame_slot: (Npairs,) int64 frame of every pair, in [0, F).
            pair_text_idx: (Npairs,) int64 text of every pair, in [0, T).
            geometry: optional box / point prompts per pair.

        Returns:
            `DetectorOutput` with pred_logits (Npairs, Q, 1), pred_boxes and
            pred_boxes_xyxy (Npairs, Q, 4) normalised, presence_logit_dec (Npairs, 1), pred_masks
            (Npairs, Q, 4h, 4w) logits (h, w the token grid), queries (Npairs, Q, C), semantic_seg
            (Npairs, 1, 4h, 4w), aux_outputs for the D - 1 earlier decoder layers, and o2m in training.
        """
        fpn, fpn_pos = vision["backbone_fpn"], vision["vision_pos_enc"]
        feat_size = (int(fpn[-1].shape[-2]), int(fpn[-1].shape[-1]))
        frame_tokens = fpn[-1].flatten(2).transpose(1, 2)  # F, HW, C
        frame_pos = fpn_pos[-1].flatten(2).transpose(1, 2)  # F, HW, C
        text_feats = text["language_features"].transpose(0, 1)[pair_text_idx]  # Npairs, L, C
        text_mask = text["language_mask"][pair_text_idx]  # Npairs, L

        geo_tokens, geo_mask = self.geometry_encoder(frame_tokens, frame_pos, feat_size, pair_frame_slot, geometry)
        prompt = torch.cat([text_feats, geo_tokens], dim=1)  # Npairs, L + G, C
        prompt_mask = torch.cat([text_mask, geo_mask], dim=1)

        pair_pos = frame_pos[pair_frame_slot]
        states = self.transformer["encoder"](frame_tokens[pair_frame_slot], pair_pos, prompt, prompt_mask)
        decoded = self.transformer["decoder"](states, pair_pos, feat_size, prompt, prompt_mask)
        logits = self.dot_prod_scoring(decoded.queries, prompt, prompt_mask)  # D, Npairs, Qt, 1

        masks = semantic = None
        if self.segmentation_head is not None:
            fine = [level[pair_frame_slot] for level in fpn[:-1]]
            masks, semantic = self.segmentation_head(fine, states, feat_size, prompt, prompt_mask, decoded.queries[-1])

        num_queries = self.transformer["decoder"].num_queries
        o2o = slice(0, num_queries)
        output = _layer_outputs(logits, decoded.boxes_cxcywh, decoded.presence_logits, o2o)
        output.pred_masks = None if masks is None else masks[:, o2o]
        output.queries = decoded.queries[-1][:, o2o]
        output.semantic_seg = semantic
        if decoded.queries.shape[2] > num_queries:
            o2m = slice(num_queries, None)
            output.o2m = _layer_outputs(logits, decoded.boxes_cxcywh, decoded.presence_logits, o2m)
            output.o2m.pred_masks = None if masks is None else masks[:, o2m]
        return output


def _layer_outputs(
    logits: torch.Tensor, boxes_cxcywh: torch.Tensor, presence: torch.Tensor, queries: slice
) -> DetectorOutput:
    """Last-layer `DetectorOutput` with the earlier layers as aux outputs, for one query set.

    Args:
        logits: (D, Npairs, Qt, 1); boxes_cxcywh: (D, Npairs, Qt, 4); presence: (D, Npairs, 1).
        queries: the query set's slice of the Qt axis.
    """
    per_layer = [
        DetectorOutput(
            pred_logits=logits[d][:, queries],
            pred_boxes=boxes_cxcywh[d][:, queries],
            pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes_cxcywh[d][:, queries]),
            presence_logit_dec=presence[d],
        )
        for d in range(logits.shape[0])
    ]
    last = per_layer[-1]
    last.aux_outputs = per_layer[:-1]
    return last


def init_transformer_weights(model: Sam3Image) -> None:
    """Xavier-uniform init of the encoder and decoder matrices, as the released model's training
    started from; the box head, learned queries and reference boxes keep their own init."""
    for name, param in model.transformer.named_parameters():
        if param.dim() > 1 and not any(k in name for k in ("bbox_embed", "query_embed", "reference_points")):
            nn.init.xavier_uniform_(param)
