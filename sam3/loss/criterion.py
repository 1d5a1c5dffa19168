"""Set criterion for (frame, prompt) pairs: matching, then per-term losses over every prediction head.

DETR-style set loss (Carion et al., 2020) with SAM3's terms: IoU-aware BCE classification, presence,
L1 + GIoU boxes and point-sampled focal + dice masks, on the final decoder layer, the auxiliary layers
(`_aux_i`) and the one-to-many query branch (`_o2m`, weight `o2m_weight`). Component names follow the
official training logs (`loss_ce`, `presence_loss`, `loss_bbox`, `loss_giou`, `loss_mask`,
`loss_dice`).

Normalisation (DESIGN.md "Loss normalisation", `sam3.loss.normalization`): as SAM3's released
fine-tuning objective, but over the whole optimizer step on every rank: box and mask terms are sums
over matched queries divided by N (visible target boxes); the classification term is the sum over
(pair, query) entries divided by their number G * Q (`weak_loss`: the entries it keeps); the presence
term is the sum over pairs divided by G. Each rank's share is multiplied by the loss scale W. The counts
come in as an argument; the criterion never communicates, and nothing in a pair's loss depends on the
other pairs of the batch, so a sharded batch sums to the single-process loss. SAM3's optional scale of
the whole loss by the square root of the batch's pairs is offered as sqrt(G) of the step
(`scale_by_sqrt_pairs`), which keeps that equality.

Heads with the same number of queries are stacked and each term runs once over the stack, and all
one-to-one matchings share one host transfer of their costs. Host syncs: the matchers read the
visibility mask and the one-to-one costs on the host, and the one-to-many matcher selects its matches
(`nonzero`); the loss terms themselves never wait for the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam3.loss.functional import (
    dice_loss,
    iou_aware_bce,
    point_sample_bits,
    point_sample_logits,
    sample_keys,
    sigmoid_focal_loss,
    uncertain_point_coords,
)
from sam3.loss.matcher import HungarianMatcher, Matches, OneToManyMatcher
from sam3.loss.normalization import LossNormalization
from sam3.ops.boxes import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from sam3.structures import DetectorOutput, PairTargets

__all__ = ["LossWeights", "ClassificationLoss", "MaskLoss", "SetCriterion", "build_criterion"]

_O2M_HEAD_OFFSET = 1000  # head ids of o2m heads, for mask sampling keys


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term in the total (the official SAM3 training values)."""

    loss_ce: float = 20.0
    presence_loss: float = 20.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_mask: float = 200.0
    loss_dice: float = 10.0


@dataclass(frozen=True)
class ClassificationLoss:
    """IoU-aware BCE and presence settings.

    Attributes:
        pos_weight: weight of matched queries.
        weak_loss: SAM3's `weak_loss`: the unmatched queries of pairs whose prompt is not
            exhaustively annotated get no negative supervision, and those entries leave the
            classification denominator too. Off, every (pair, query) entry counts (SAM3's released
            roboflow fine-tune, whose data is exhaustive).
        alpha: soft target of a matched query = clamp(p^alpha * IoU^(1 - alpha), min_target).
        gamma: unmatched queries are weighted by p^gamma.
        min_target: lower clamp of the soft target.
        presence_alpha: focal alpha of the presence loss.
        presence_gamma: focal gamma of the presence loss (0: alpha-weighted BCE).
    """

    pos_weight: float = 10.0
    weak_loss: bool = True
    alpha: float = 0.25
    gamma: float = 2.0
    min_target: float = 0.01
    presence_alpha: float = 0.5
    presence_gamma: float = 0.0


@dataclass(frozen=True)
class MaskLoss:
    """Mask loss settings.

    Attributes:
        focal_alpha: alpha of the sigmoid focal loss.
        focal_gamma: gamma of the sigmoid focal loss.
        num_points: points sampled per matched mask (PointRend), or None for SAM3's dense loss: the
            predicted logits upsampled bilinearly to the target masks' resolution, every pixel counted
            (memory grows with matched masks x target pixels).
        oversample_ratio: candidate points per sampled point for importance sampling.
        importance_sample_ratio: share of points taken where the prediction is most uncertain.
        on_aux: also apply the mask loss to auxiliary layers that predict masks.
    """

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    num_points: int | None = 112 * 112
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    on_aux: bool = False


@dataclass
class _Head:
    """One prediction head: its output, name suffix, branch weight, matcher and terms."""

    output: DetectorOutput
    suffix: str
    weight: float
    head_id: int
    one_to_many: bool
    use_masks: bool
    use_presence: bool
    matches: Matches | None = None


@dataclass
class _Stack:
    """Heads with the same query count, stacked: K heads over Npairs pairs, with their matches.

    logits (K, Npairs, Q), boxes (K, Npairs, Q, 4) cxcywh, boxes_xyxy (K, Npairs, Q, 4); head_idx,
    pair_idx, query_idx, target_idx (M,) over the matches of all K heads.
    """

    heads: list[_Head]
    logits: torch.Tensor
    boxes: torch.Tensor
    boxes_xyxy: torch.Tensor
    head_idx: torch.Tensor
    pair_idx: torch.Tensor
    query_idx: torch.Tensor
    target_idx: torch.Tensor


class SetCriterion(nn.Module):
    """Matches every prediction head to the targets and sums the weighted loss terms.

    Args:
        matcher: the one-to-one matcher of the decoder layers.
        o2m_matcher: the matcher of the o2m branch's final layer, or None to match it one-to-one.
        weights: per-term weights.
        classification: classification and presence settings.
        masks: mask loss settings.
        o2m_weight: weight of every o2m head's terms.
        o2m_matcher_on_aux: match the o2m outputs of auxiliary layers with `o2m_matcher` too (the
            official default matches them one-to-one).
        scale_by_sqrt_pairs: multiply the whole loss by sqrt(G), G the step's pairs over every rank
            (SAM3's `scale_by_find_batch_size` uses the rank's own batch; with whole-step counts the
            objective stays independent of how frames are sharded).
    """

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        o2m_matcher: OneToManyMatcher | None = None,
        weights: LossWeights = LossWeights(),
        classification: ClassificationLoss = ClassificationLoss(),
        masks: MaskLoss = MaskLoss(),
        o2m_weight: float = 2.0,
        o2m_matcher_on_aux: bool = False,
        scale_by_sqrt_pairs: bool = False,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.o2m_matcher = o2m_matcher
        self.weights = weights
        self.classification = classification
        self.masks = masks
        self.o2m_weight = o2m_weight
        self.o2m_matcher_on_aux = o2m_matcher_on_aux
        self.scale_by_sqrt_pairs = scale_by_sqrt_pairs

    def forward(
        self,
        outputs: DetectorOutput,
        targets: PairTargets,
        normalization: LossNormalization,
        step: int = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Computes the step loss of this batch's pairs.

        Args:
            outputs: predictions over Npairs pairs: the final layer, `aux_outputs`, and `o2m` with its
                own `aux_outputs`.
            targets: targets over the same pairs, on the same device.
            normalization: the step's counts over every rank and micro-batch, and the scale W
                (`LossNormalization.local(targets)` when this batch is the whole step).
            step: optimizer step, part of the mask point sampling key.

        Returns:
            The total loss (scalar, differentiable) and every component `term + suffix`, detached,
            already normalised (W / count) but before term and branch weights and the sqrt(G) scale.
        """
        if outputs.num_pairs != len(targets):
            raise ValueError(f"SetCriterion: outputs hold {outputs.num_pairs} pairs but targets {len(targets)}")
        device = outputs.pred_logits.device
        heads = self._heads(outputs)
        self._match(heads, targets)

        total = torch.zeros((), device=device)
        components: dict[str, torch.Tensor] = {}

        def add(term: str, group: list[_Head], per_head: torch.Tensor, norm: float) -> None:
            nonlocal total
            values = per_head * norm  # (K,)
            branch = torch.tensor([h.weight for h in group]).to(device, non_blocking=True)
            total = total + getattr(self.weights, term) * (values * branch).sum()
            for head, value in zip(group, values.detach().unbind(), strict=True):
                components[term + head.suffix] = value

        box_norm = normalization.box_norm
        for stack in self._stacks(heads):
            for term, per_head in self.loss_boxes(stack, targets).items():
                add(term, stack.heads, per_head, box_norm)
            entry_norm = normalization.entry_norm(stack.logits.shape[-1], self.classification.weak_loss)
            add("loss_ce", stack.heads, self.loss_labels(stack, targets), entry_norm)
        with_presence = [h for h in heads if h.use_presence]
        if with_presence:
            presence = torch.stack([h.output.presence_logit_dec.reshape(-1) for h in with_presence])  # (K, Npairs)
            add("presence_loss", with_presence, self.loss_presence(presence, targets), normalization.pair_norm)
        for head in heads:
            if head.use_masks:
                for term, value in self.loss_masks(head, targets, step).items():
                    add(term, [head], value.reshape(1), box_norm)
        if self.scale_by_sqrt_pairs:
            total = total * math.sqrt(max(normalization.counts.num_pairs, 1))
        return total, components

    def loss_boxes(self, stack: _Stack, targets: PairTargets) -> dict[str, torch.Tensor]:
        """L1 on normalised cxcywh and 1 - GIoU, summed over matched queries: (K,) per term."""
        num_heads = len(stack.heads)
        matched = (stack.head_idx, stack.pair_idx, stack.query_idx)
        target_boxes = targets.boxes_padded[stack.pair_idx, stack.target_idx]  # (M, 4)
        l1 = (stack.boxes[matched] - target_boxes).abs().sum(-1)
        giou = elementwise_generalized_box_iou(stack.boxes_xyxy[matched], box_cxcywh_to_xyxy(target_boxes))
        return {
            "loss_bbox": _sum_per_head(l1, stack.head_idx, num_heads),
            "loss_giou": _sum_per_head(1 - giou, stack.head_idx, num_heads),
        }

    def loss_labels(self, stack: _Stack, targets: PairTargets) -> torch.Tensor:
        """IoU-aware BCE summed over (pair, query) entries: (K,).

        Entries of pairs without a visible target are zero (the presence term covers them) but stay
        in the denominator, as in SAM3; with `weak_loss`, unmatched queries of non-exhaustive prompts
        are dropped.
        """
        cfg = self.classification
        matched = (stack.head_idx, stack.pair_idx, stack.query_idx)
        with torch.no_grad():
            target_xyxy = box_cxcywh_to_xyxy(targets.boxes_padded[stack.pair_idx, stack.target_idx])
            iou = elementwise_box_iou(stack.boxes_xyxy[matched].float(), target_xyxy.float())
            prob = stack.logits[matched].float().sigmoid()
            soft = (prob.pow(cfg.alpha) * iou.pow(1 - cfg.alpha)).clamp(min=cfg.min_target)
            is_matched = torch.zeros(stack.logits.shape, dtype=torch.bool, device=soft.device)
            is_matched[matched] = True
            soft_targets = torch.zeros(stack.logits.shape, dtype=soft.dtype, device=soft.device)
            soft_targets[matched] = soft
            keep = (targets.num_boxes > 0).view(1, -1, 1).expand_as(is_matched)  # (K, Npairs, Q)
            if cfg.weak_loss:
                keep = keep & (is_matched | targets.is_exhaustive.view(1, -1, 1))
        loss = iou_aware_bce(stack.logits.float(), is_matched, soft_targets, cfg.pos_weight, cfg.gamma)
        return (loss * keep).sum((1, 2))

    def loss_presence(self, presence_logits: torch.Tensor, targets: PairTargets) -> torch.Tensor:
        """Focal loss of the presence logit against "the prompt has a visible instance in the frame".

        Args:
            presence_logits: (K, Npairs).

        Returns:
            (K,) sums over pairs.
        """
        cfg = self.classification
        present = (targets.num_boxes > 0).to(torch.float32).unsqueeze(0).expand_as(presence_logits)
        loss = sigmoid_focal_loss(presence_logits.float(), present, cfg.presence_alpha, cfg.presence_gamma)
        return loss.sum(-1)

    def loss_masks(self, head: _Head, targets: PairTargets, step: int) -> dict[str, torch.Tensor]:
        """Sigmoid focal (mean over points or pixels) and dice, summed over matched masks.

        With `num_points`, points are importance-sampled on the predicted logits (PointRend) from keys
        hashed from (step, clip key, global frame index, prompt index, object id, head), and read in
        normalised coordinates from both the predicted and the (possibly larger) target masks. With
        `num_points=None`, the logits are upsampled to the target resolution and every pixel counts.
        """
        assert head.matches is not None and head.output.pred_masks is not None, "masks need matches and pred_masks"
        pred_masks = head.output.pred_masks
        matches = head.matches
        if len(matches) == 0 or targets.masks is None:
            zero = pred_masks.sum() * 0.0  # keeps the graph connected
            return {"loss_mask": zero, "loss_dice": zero}
        cfg = self.masks
        src = pred_masks[matches.pair_idx, matches.query_idx].float()  # (M, h, w)
        target_masks = targets.masks
        height, width = target_masks.height, target_masks.width
        rows = targets.mask_rows(matches.pair_idx, matches.target_idx)  # (M,) into the packed visible masks
        if cfg.num_points is None:
            src_values = F.interpolate(src.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
            src_values = src_values.flatten(1)  # (M, H W)
            target_values = target_masks.unpack(rows).reshape(-1, height * width).float()  # (M, H W)
        else:
            pairs = targets.pairs
            keys = sample_keys(
                step,
                targets.pair_clip_keys()[matches.pair_idx],
                pairs.frame_idx[matches.pair_idx],
                pairs.prompt_idx[matches.pair_idx],
                targets.object_ids_padded[matches.pair_idx, matches.target_idx],
                head.head_id,
            )
            coords = uncertain_point_coords(
                src, keys, cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio
            )  # (M, P, 2)
            with torch.no_grad():
                target_values = point_sample_bits(target_masks.bits, height, width, rows, coords)  # (M, P)
            src_values = point_sample_logits(src, coords)  # (M, P)
        focal = sigmoid_focal_loss(src_values, target_values, cfg.focal_alpha, cfg.focal_gamma).mean(-1)
        return {"loss_mask": focal.sum(), "loss_dice": dice_loss(src_values, target_values).sum()}

    def _heads(self, outputs: DetectorOutput) -> list[_Head]:
        """The final layer and the auxiliary layers, then the o2m branch's final and auxiliary layers.

        The o2m branch (`outputs.o2m`, its earlier layers in `outputs.o2m.aux_outputs`) gets no presence
        loss: its presence logit, if any, is the one the o2o heads already supervise.
        """
        heads = []
        branches = [(outputs, "", 1.0, 0, False)]
        if outputs.o2m is not None:
            branches.append((outputs.o2m, "_o2m", self.o2m_weight, _O2M_HEAD_OFFSET, True))
        for final, branch_suffix, weight, id_offset, is_o2m in branches:
            layers = [(final, "", False)] + [(aux, f"_aux_{i}", True) for i, aux in enumerate(final.aux_outputs)]
            for layer_id, (out, suffix, is_aux) in enumerate(layers):
                heads.append(
                    _Head(
                        output=out,
                        suffix=suffix + branch_suffix,
                        weight=weight,
                        head_id=id_offset + layer_id,
                        one_to_many=is_o2m and self.o2m_matcher is not None and (self.o2m_matcher_on_aux or not is_aux),
                        use_masks=out.pred_masks is not None and (self.masks.on_aux or not is_aux),
                        use_presence=not is_o2m and out.presence_logit_dec is not None,
                    )
                )
        return heads

    def _match(self, heads: list[_Head], targets: PairTargets) -> None:
        """Fills `matches` of every head: one batched Hungarian call per query count, then the o2m heads."""
        by_shape: dict[tuple[int, ...], list[_Head]] = {}
        for head in heads:
            if not head.one_to_many:
                by_shape.setdefault(tuple(head.output.pred_logits.shape), []).append(head)
        for group in by_shape.values():
            for head, matches in zip(group, self.matcher.match_heads([h.output for h in group], targets), strict=True):
                head.matches = matches
        for head in heads:
            if head.one_to_many:
                assert self.o2m_matcher is not None, "one-to-many heads exist only with an o2m matcher"
                head.matches = self.o2m_matcher(head.output, targets)

    @staticmethod
    def _stacks(heads: list[_Head]) -> list[_Stack]:
        """Groups heads by query count and stacks their predictions and matches."""
        by_shape: dict[tuple[int, ...], list[_Head]] = {}
        for head in heads:
            by_shape.setdefault(tuple(head.output.pred_logits.shape), []).append(head)
        stacks = []
        for group in by_shape.values():
            matches = [h.matches for h in group]
            assert all(m is not None for m in matches), "heads are matched before stacking"
            head_idx = torch.cat(
                [torch.full_like(m.pair_idx, k) for k, m in enumerate(matches)]  # type: ignore[union-attr]
            )
            stacks.append(
                _Stack(
                    heads=group,
                    logits=torch.stack([h.output.pred_logits.squeeze(-1) for h in group]),  # (K, Npairs, Q)
                    boxes=torch.stack([h.output.pred_boxes for h in group]),  # (K, Npairs, Q, 4)
                    boxes_xyxy=torch.stack([h.output.pred_boxes_xyxy for h in group]),  # (K, Npairs, Q, 4)
                    head_idx=head_idx,
                    pair_idx=torch.cat([m.pair_idx for m in matches]),  # type: ignore[union-attr]
                    query_idx=torch.cat([m.query_idx for m in matches]),  # type: ignore[union-attr]
                    target_idx=torch.cat([m.target_idx for m in matches]),  # type: ignore[union-attr]
                )
            )
        return stacks


def _sum_per_head(values: torch.Tensor, head_idx: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(M,) values -> (K,) sums per head."""
    return torch.zeros(num_heads, dtype=values.dtype, device=values.device).index_add(0, head_idx, values)


def build_criterion() -> SetCriterion:
    """The SAM3 training criterion with the official defaults (`configs/loss/sam3.yaml` spells them out)."""
    return SetCriterion(matcher=HungarianMatcher(), o2m_matcher=OneToManyMatcher())
