"""Query-to-target assignment for (frame, prompt) pairs: the one-to-one Hungarian matcher and the
one-to-many matcher of the o2m query branch.

The one-to-one matcher follows DETR (Carion et al., 2020, Sec. 3.1) with the binary focal class cost of
Deformable DETR: cost = w_class * focal + w_bbox * L1(cxcywh) + w_giou * (-GIoU). The cost matrices of
every pair, and of every prediction head passed together (decoder layers, o2m heads matched one-to-one),
are computed in one padded tensor operation on the predictions' device and copied to the host in a
single transfer; `scipy.optimize.linear_sum_assignment` then solves each pair over its visible targets
only, so placeholders of invisible instances and padding never match.

The one-to-many matcher follows DAC-DETR: per target, the top-k queries by score
alpha * p + (1 - alpha) * IoU that exceed a threshold. Unlike the official implementation, a query
selected by several targets is kept only for the target where its score is highest, so no query is
assigned twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import DetectorOutput, PairTargets

__all__ = ["Matches", "HungarianMatcher", "OneToManyMatcher", "pairwise_box_iou_giou"]


@dataclass
class Matches:
    """Assignments of one prediction head over a batch of pairs, one entry per matched query.

    Attributes:
        pair_idx: (M,) int64; the pair of the match.
        query_idx: (M,) int64; the matched query, in [0, Q).
        target_idx: (M,) int64; the matched instance slot of the pair, in [0, Nmax) (indexes
            `PairTargets.boxes_padded` and `masks_padded` along dim 1).
    """

    pair_idx: torch.Tensor
    query_idx: torch.Tensor
    target_idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.pair_idx.numel())

    @staticmethod
    def empty(device: torch.device | str) -> Matches:
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return Matches(none, none.clone(), none.clone())


class HungarianMatcher:
    """One-to-one minimum-cost matching of queries to the visible targets of each pair.

    Args:
        cost_class: weight of the binary focal classification cost.
        cost_bbox: weight of the L1 distance between normalised cxcywh boxes.
        cost_giou: weight of the negative generalised IoU.
        focal_alpha: alpha of the focal class cost.
        focal_gamma: gamma of the focal class cost.
        stable: use the IoU-weighted class cost: the probability is multiplied by (GIoU + 1) / 2
            before the focal cost, so a confident query far from a target is not cheap to match.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        stable: bool = False,
    ) -> None:
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0; set at least one")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.stable = stable

    def cost(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Matching cost of every target slot against every query (lower is better), target-major.

        Args:
            pred_logits: (..., Q) class logits.
            pred_boxes: (..., Q, 4) normalised cxcywh.
            target_boxes: (..., N, 4) normalised cxcywh, batch dims broadcastable against `pred_boxes`'.

        Returns:
            (..., N, Q) float32 cost. Rows of zero-size (placeholder) targets are finite but
            meaningless; callers drop them.
        """
        pred_logits = pred_logits.float()
        pred_boxes = pred_boxes.float()
        target_boxes = target_boxes.float()
        batch = torch.broadcast_shapes(pred_boxes.shape[:-2], target_boxes.shape[:-2])
        cost = torch.cdist(
            target_boxes.expand(*batch, *target_boxes.shape[-2:]),
            pred_boxes.expand(*batch, *pred_boxes.shape[-2:]),
            p=1,
        ).mul_(self.cost_bbox)  # (..., N, Q)
        _, giou = pairwise_box_iou_giou(box_cxcywh_to_xyxy(target_boxes), box_cxcywh_to_xyxy(pred_boxes))
        cost.sub_(giou, alpha=self.cost_giou)
        if self.stable:
            # p' = p * r with r = (GIoU + 1) / 2, in log space: 1 - p r = (1 - r) + r (1 - p).
            ratio = giou.add_(1).div_(2).clamp_(min=0.0, max=1.0)
            log_ratio = ratio.clamp(min=1e-12).log()
            log_p = F.logsigmoid(pred_logits).unsqueeze(-2) + log_ratio
            log_one_minus_p = torch.logaddexp(
                torch.log1p(-ratio), log_ratio + F.logsigmoid(-pred_logits).unsqueeze(-2)
            )
            class_cost = _focal_cost(log_p, log_one_minus_p, self.focal_alpha, self.focal_gamma)
        else:
            class_cost = _focal_cost(
                F.logsigmoid(pred_logits), F.logsigmoid(-pred_logits), self.focal_alpha, self.focal_gamma
            ).unsqueeze(-2)  # (..., 1, Q)
        return cost.add_(class_cost, alpha=self.cost_class)

    @torch.no_grad()
    def match_heads(self, heads: Sequence[DetectorOutput], targets: PairTargets) -> list[Matches]:
        """Matches several prediction heads over the same targets with one cost computation.

        All heads must have the same number of pairs and queries. The cost tensor of every head and
        pair is built on the predictions' device and copied to the host once (the only host sync).

        Args:
            heads: K outputs over the same Npairs pairs, each with `pred_logits` (Npairs, Q, 1) and
                `pred_boxes` (Npairs, Q, 4) normalised cxcywh.
            targets: the pairs' targets; only instances with `is_visible_padded` are matched.

        Returns:
            K `Matches` on the predictions' device, ordered by pair then target slot; a pair with no
            visible target has no match, and a pair with more visible targets than queries matches
            Q of them.
        """
        if not heads:
            return []
        shapes = {tuple(h.pred_logits.shape) for h in heads}
        if len(shapes) != 1:
            raise ValueError(f"HungarianMatcher.match_heads: heads differ in pred_logits shape {sorted(shapes)}")
        num_pairs, num_queries = heads[0].pred_logits.shape[:2]
        if len(targets) != num_pairs:
            raise ValueError(f"HungarianMatcher: {num_pairs} predicted pairs but {len(targets)} target pairs")
        device = heads[0].pred_logits.device
        num_slots = targets.boxes_padded.shape[1]
        if num_slots == 0 or num_pairs == 0 or num_queries == 0:
            return [Matches.empty(device) for _ in heads]

        logits = torch.stack([h.pred_logits.squeeze(-1) for h in heads])  # (K, Npairs, Q)
        boxes = torch.stack([h.pred_boxes for h in heads])  # (K, Npairs, Q, 4)
        cost = self.cost(logits, boxes, targets.boxes_padded.to(device).unsqueeze(0))  # (K, Npairs, N, Q)
        visible = targets.is_visible_padded.to(device=device, dtype=cost.dtype)  # (Npairs, N)
        # The visibility rides along as an extra query column so one transfer brings both to the host.
        host = torch.cat([cost, visible.expand(len(heads), -1, -1).unsqueeze(-1)], dim=-1).cpu().numpy()
        return self._assign(host, device)

    def __call__(self, output: DetectorOutput, targets: PairTargets) -> Matches:
        """Matches one head; see `match_heads`."""
        return self.match_heads([output], targets)[0]

    @staticmethod
    def _assign(host: np.ndarray, device: torch.device) -> list[Matches]:
        """Solves every (head, pair) assignment on the host. host: (K, Npairs, N, Q + 1), last column = visibility."""
        cost, visible = host[..., :-1], host[0, :, :, -1] > 0.5  # (K, Npairs, N, Q), (Npairs, N)
        if not np.isfinite(cost).all():
            head, pair = np.argwhere(~np.isfinite(cost))[0][:2]
            raise ValueError(
                f"HungarianMatcher: the matching cost of head {head}, pair {pair} holds NaN or inf "
                "(non-finite predicted logits or boxes?)"
            )
        num_heads, num_pairs = cost.shape[:2]
        found: list[list[np.ndarray]] = [[] for _ in range(num_heads)]  # per head: (3, m) blocks
        for pair in range(num_pairs):
            rows = np.flatnonzero(visible[pair])
            if rows.size == 0:
                continue
            for head in range(num_heads):
                picked_rows, picked_queries = linear_sum_assignment(cost[head, pair, rows])  # (n, Q) problem
                found[head].append(
                    np.stack([np.full(picked_rows.size, pair), picked_queries, rows[picked_rows]]).astype(np.int64)
                )
        out = []
        for blocks in found:
            if not blocks:
                out.append(Matches.empty(device))
                continue
            flat = torch.from_numpy(np.concatenate(blocks, axis=1)).to(device, non_blocking=True)  # (3, M)
            out.append(Matches(flat[0], flat[1], flat[2]))
        return out


class OneToManyMatcher:
    """Assigns each visible target its top-k queries by alpha * p + (1 - alpha) * IoU above a threshold.

    Each query is assigned to at most one target: where several targets select the same query, the
    target with the highest score keeps it. Runs entirely on the predictions' device.

    Args:
        alpha: weight of the class probability against the box IoU in the score.
        threshold: a query is assigned only when its score exceeds this value.
        topk: the number of queries each target may take.
    """

    def __init__(self, *, alpha: float = 0.3, threshold: float = 0.4, topk: int = 4) -> None:
        if topk < 1:
            raise ValueError(f"OneToManyMatcher: topk must be >= 1, got {topk}")
        self.alpha = alpha
        self.threshold = threshold
        self.topk = topk

    @torch.no_grad()
    def __call__(self, output: DetectorOutput, targets: PairTargets) -> Matches:
        """Matches one head.

        Args:
            output: `pred_logits` (Npairs, Q, 1) and `pred_boxes` (Npairs, Q, 4) normalised cxcywh.
            targets: the pairs' targets; only visible instances are assigned.

        Returns:
            `Matches` with every query at most once, ordered by pair then query.
        """
        device = output.pred_logits.device
        num_pairs, num_queries = output.pred_logits.shape[:2]
        num_slots = targets.boxes_padded.shape[1]
        if num_slots == 0 or num_pairs == 0 or num_queries == 0:
            return Matches.empty(device)
        prob = output.pred_logits.squeeze(-1).float().sigmoid()  # (Npairs, Q)
        iou, _ = pairwise_box_iou_giou(
            box_cxcywh_to_xyxy(output.pred_boxes.float()),
            box_cxcywh_to_xyxy(targets.boxes_padded.to(device).float()),
        )  # (Npairs, Q, N)
        score = self.alpha * prob.unsqueeze(-1) + (1 - self.alpha) * iou
        visible = targets.is_visible_padded.to(device).unsqueeze(1)  # (Npairs, 1, N)
        score = score.masked_fill(~visible, -torch.inf)
        top = score.topk(min(self.topk, num_queries), dim=1).indices  # (Npairs, k, N)
        selected = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)
        selected &= score > self.threshold
        best_target = score.masked_fill(~selected, -torch.inf).argmax(-1)  # (Npairs, Q)
        pair_idx, query_idx = selected.any(-1).nonzero(as_tuple=True)
        return Matches(pair_idx, query_idx, best_target[pair_idx, query_idx])


def pairwise_box_iou_giou(boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalised IoU of every box of `boxes1` with every box of `boxes2`, batched.

    Works coordinate by coordinate on broadcast (..., Q, 1) x (..., 1, N) views, so every intermediate
    is one contiguous (..., Q, N) tensor (several times faster than slicing stacked corners).

    Args:
        boxes1_xyxy: (..., Q, 4).
        boxes2_xyxy: (..., N, 4), batch dims broadcastable against `boxes1_xyxy`'s.

    Returns:
        (..., Q, N) IoU and (..., Q, N) GIoU; zero-area unions and hulls give 0 instead of NaN.
    """
    x0a, y0a, x1a, y1a = (c.unsqueeze(-1) for c in boxes1_xyxy.unbind(-1))  # (..., Q, 1) each
    x0b, y0b, x1b, y1b = (c.unsqueeze(-2) for c in boxes2_xyxy.unbind(-1))  # (..., 1, N) each
    area_a = (x1a - x0a) * (y1a - y0a)
    area_b = (x1b - x0b) * (y1b - y0b)
    inter = (torch.minimum(x1a, x1b) - torch.maximum(x0a, x0b)).clamp_(min=0)
    inter.mul_((torch.minimum(y1a, y1b) - torch.maximum(y0a, y0b)).clamp_(min=0))  # (..., Q, N)
    union = (area_a + area_b).sub_(inter)
    iou = inter.div_(union.clamp(min=1e-12))
    hull = torch.maximum(x1a, x1b).sub_(torch.minimum(x0a, x0b))
    hull.mul_(torch.maximum(y1a, y1b).sub_(torch.minimum(y0a, y0b)))
    giou = iou - (hull - union).div_(hull.clamp(min=1e-12))
    return iou, giou


def _focal_cost(log_p: torch.Tensor, log_one_minus_p: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Binary focal cost of calling a query positive: focal loss as positive minus as negative."""
    p = log_p.exp()
    positive = -alpha * (1 - p).pow(gamma) * log_p
    negative = -(1 - alpha) * p.pow(gamma) * log_one_minus_p
    return positive - negative
