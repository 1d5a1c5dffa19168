"""Query-to-target assignment for (frame, prompt) pairs: the one-to-one Hungarian matcher and the
one-to-many matcher of the o2m query branch.

The one-to-one matcher follows DETR (Carion et al., 2020, Sec. 3.1) with the binary focal class cost of
Deformable DETR: cost = w_class * focal + w_bbox * L1(cxcywh) + w_giou * (-GIoU). The costs of every
pair, and of every prediction head passed together (decoder layers, o2m heads matched one-to-one), are
computed in one batched tensor operation on the predictions' device, packed over the visible targets
(one row of Q costs per visible target and head), and copied to the host in a single transfer;
`scipy.optimize.linear_sum_assignment` then solves each pair, so placeholders of invisible instances
and padding never match and cost nothing.

The one-to-many matcher follows DAC-DETR: per target, the top-k queries by score
alpha * p + (1 - alpha) * IoU that exceed a threshold. As in SAM3, a query selected by several targets
of a pair serves each of them; `unique_queries=True` keeps it only for the target where its score is
highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam3.structures import DetectorOutput, PairTargets

__all__ = ["Matches", "HungarianMatcher", "OneToManyMatcher"]


@dataclass
class Matches:
    """Assignments of one prediction head over a batch of pairs, one entry per matched query.

    Attributes:
        pair_idx: (M,) int64; the pair of the match.
        query_idx: (M,) int64; the matched query, in [0, Q).
        target_idx: (M,) int64; the matched instance slot of the pair, in [0, Nmax) (indexes
            `PairTargets.boxes_padded` along dim 1; `PairTargets.mask_rows` finds its mask).
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

    @torch.no_grad()
    def cost(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Matching cost of every target slot against every query (lower is better), target-major.

        Args:
            pred_logits: (..., Q) class logits.
            pred_boxes: (..., Q, 4) normalised cxcywh.
            target_boxes: (..., N, 4) normalised cxcywh, batch dims broadcastable against `pred_boxes`'.

        Returns:
            (..., N, Q) float32 cost.
        """
        logits = pred_logits.float()
        per_query = torch.stack([*self._class_terms(logits), *pred_boxes.float().unbind(-1)])  # (C, ..., Q)
        target = [c.unsqueeze(-1) for c in target_boxes.float().unbind(-1)]  # 4 x (..., N, 1)
        shape = torch.broadcast_shapes(per_query.shape[1:-1] + (1, per_query.shape[-1]), target[0].shape)
        return self._cost([c.unsqueeze(-2).expand(shape) for c in per_query], target)  # (..., N, Q)

    def _class_terms(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """Per-query class quantities: [focal cost], or [log p, log(1 - p)] for the stable cost."""
        log_p, log_one_minus_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        if self.stable:
            return [log_p, log_one_minus_p]
        return [_focal_cost(log_p, log_one_minus_p, self.focal_alpha, self.focal_gamma)]

    def _cost(self, per_query: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
        """Cost from broadcastable planes.

        Args:
            per_query: the `_class_terms` and the predicted cx, cy, w, h, each (..., N, Q).
            target: the target cx, cy, w, h, each (..., N, 1).
        """
        class_terms, pred = per_query[:-4], per_query[-4:]
        (pcx, pcy, pw, ph), (tcx, tcy, tw, th) = pred, target
        l1 = torch.sub(pcx, tcx).abs_()
        scratch = torch.empty_like(l1)
        for p, t in ((pcy, tcy), (pw, tw), (ph, th)):
            l1.add_(torch.sub(p, t, out=scratch).abs_())  # (..., N, Q)
        giou = _iou_cxcywh(pred, target, generalized=True)
        cost = l1.mul_(self.cost_bbox).sub_(giou, alpha=self.cost_giou)
        if not self.stable:
            return cost.add_(class_terms[0], alpha=self.cost_class)
        # p' = p * r with r = (GIoU + 1) / 2, in log space: 1 - p r = (1 - r) + r (1 - p).
        ratio = giou.add_(1).div_(2).clamp_(min=0.0, max=1.0)
        log_ratio = ratio.clamp(min=1e-12).log()
        log_p = class_terms[0] + log_ratio
        log_one_minus_p = torch.logaddexp(torch.log1p(-ratio), log_ratio.add_(class_terms[1]))
        return cost.add_(_focal_cost(log_p, log_one_minus_p, self.focal_alpha, self.focal_gamma), alpha=self.cost_class)

    @torch.no_grad()
    def match_heads(self, heads: Sequence[DetectorOutput], targets: PairTargets) -> list[Matches]:
        """Matches several prediction heads over the same targets with one cost computation.

        All heads must have the same number of pairs and queries. Costs are computed on the
        predictions' device for the visible targets only, packed: one row of Q costs per visible
        target and head, so padding and invisible placeholders cost nothing. The visibility mask is
        read on the host (a copy that waits for nothing but the forward when targets live on an
        accelerator) and the packed costs come back in one transfer.

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
        visible = targets.is_visible_padded.cpu()  # (Npairs, N)
        pair_host, slot_host = visible.nonzero(as_tuple=True)  # (T,) each, pair-major
        if pair_host.numel() == 0 or num_queries == 0:
            return [Matches.empty(device) for _ in heads]

        pair = pair_host.to(device, non_blocking=True)
        slot = slot_host.to(device, non_blocking=True)
        target = list(targets.boxes_padded.to(device)[pair, slot].float().unsqueeze(-1).unbind(-2))  # 4 x (T, 1)
        cost = torch.empty((len(heads), len(pair), num_queries), device=device)  # (K, T, Q)
        for k, head in enumerate(heads):
            # One head at a time keeps the working set of the elementwise chain cache-sized.
            logits = head.pred_logits.squeeze(-1).float()  # (Npairs, Q)
            per_query = torch.stack([*self._class_terms(logits), *head.pred_boxes.float().unbind(-1)], dim=1)
            per_query = per_query.index_select(0, pair)  # (T, C, Q): each visible target's own pair's queries
            cost[k] = self._cost(list(per_query.unbind(1)), target)
        host = np.ascontiguousarray(cost.cpu().numpy(), dtype=np.float64)  # (K, T, Q)
        counts = visible.sum(1).tolist()
        return self._assign(host, counts, pair_host.numpy(), slot_host.numpy(), device)

    def __call__(self, output: DetectorOutput, targets: PairTargets) -> Matches:
        """Matches one head; see `match_heads`."""
        return self.match_heads([output], targets)[0]

    @staticmethod
    def _assign(
        host: np.ndarray, counts: list[int], pairs: np.ndarray, slots: np.ndarray, device: torch.device
    ) -> list[Matches]:
        """Solves every (head, pair) assignment on the host.

        Args:
            host: (K, T, Q) packed costs, the rows of each pair contiguous in pair order.
            counts: visible targets per pair.
            pairs: (T,) the pair of each packed row.
            slots: (T,) the slot of each packed row.
        """
        if not np.isfinite(host).all():
            head, row = np.argwhere(~np.isfinite(host))[0][:2]
            raise ValueError(
                f"HungarianMatcher: the matching cost of head {head}, pair {pairs[row]} holds NaN or inf "
                "(non-finite predicted logits or boxes?)"
            )
        rows: list[list[np.ndarray]] = [[] for _ in range(host.shape[0])]
        queries: list[list[np.ndarray]] = [[] for _ in range(host.shape[0])]
        start = 0
        for count in counts:
            if count == 0:
                continue
            for head in range(host.shape[0]):
                picked_rows, picked_queries = linear_sum_assignment(host[head, start : start + count])  # (n, Q)
                rows[head].append(picked_rows + start)
                queries[head].append(picked_queries)
            start += count
        out = []
        for head_rows, head_queries in zip(rows, queries, strict=True):
            packed_rows = np.concatenate(head_rows)
            flat = np.stack([pairs[packed_rows], np.concatenate(head_queries), slots[packed_rows]]).astype(np.int64)
            flat = torch.from_numpy(flat).to(device, non_blocking=True)  # (3, M)
            out.append(Matches(flat[0], flat[1], flat[2]))
        return out


class OneToManyMatcher:
    """Assigns each visible target its top-k queries by alpha * p + (1 - alpha) * IoU above a threshold.

    Scores are computed for the visible targets only (packed as in `HungarianMatcher`) on the
    predictions' device; only the final selection of the matches waits for the device.

    Args:
        alpha: weight of the class probability against the box IoU in the score.
        threshold: a query is assigned only when its score exceeds this value.
        topk: the number of queries each target may take.
        unique_queries: where several targets of a pair select the same query, only the target with
            the highest score (then the first) keeps it. Off, the query serves each of them (SAM3).
    """

    def __init__(
        self, *, alpha: float = 0.3, threshold: float = 0.4, topk: int = 4, unique_queries: bool = False
    ) -> None:
        if topk < 1:
            raise ValueError(f"OneToManyMatcher: topk must be >= 1, got {topk}")
        self.alpha = alpha
        self.threshold = threshold
        self.topk = topk
        self.unique_queries = unique_queries

    @torch.no_grad()
    def __call__(self, output: DetectorOutput, targets: PairTargets) -> Matches:
        """Matches one head.

        Args:
            output: `pred_logits` (Npairs, Q, 1) and `pred_boxes` (Npairs, Q, 4) normalised cxcywh.
            targets: the pairs' targets; only visible instances are assigned.

        Returns:
            `Matches` ordered by target (pair-major) then score; with `unique_queries`, every query
            at most once.
        """
        device = output.pred_logits.device
        num_pairs, num_queries = output.pred_logits.shape[:2]
        visible = targets.is_visible_padded.cpu()
        pair_host, slot_host = visible.nonzero(as_tuple=True)  # (T,) each
        if pair_host.numel() == 0 or num_queries == 0:
            return Matches.empty(device)
        pair = pair_host.to(device, non_blocking=True)
        slot = slot_host.to(device, non_blocking=True)
        target = list(targets.boxes_padded.to(device)[pair, slot].float().unsqueeze(-1).unbind(-2))  # 4 x (T, 1)
        per_query = torch.cat([output.pred_logits.float().sigmoid(), output.pred_boxes.float()], dim=-1)
        per_query = per_query.transpose(1, 2).contiguous().index_select(0, pair)  # (T, 5, Q)
        prob, *pred = per_query.unbind(1)
        score = _iou_cxcywh(pred, target).mul_(1 - self.alpha).add_(prob, alpha=self.alpha)  # (T, Q)
        top_score, top_query = score.topk(min(self.topk, num_queries), dim=1)  # (T, k)
        selected = top_score > self.threshold
        if not self.unique_queries:
            target_row, rank = selected.nonzero(as_tuple=True)
            return Matches(pair[target_row], top_query[target_row, rank], slot[target_row])
        # A query picked by several targets of its pair stays with the best-scoring one (then the first).
        key = (pair.unsqueeze(1) * num_queries + top_query).flatten()  # (T k,) one key per (pair, query)
        candidate = top_score.masked_fill(~selected, -torch.inf).flatten()
        best = torch.full((num_pairs * num_queries,), -torch.inf, device=device)
        best = best.scatter_reduce(0, key, candidate, reduce="amax")
        row = torch.arange(key.numel(), device=device)
        is_best = selected.flatten() & (candidate == best[key])
        first = torch.full_like(best, key.numel(), dtype=torch.int64)
        first = first.scatter_reduce(0, key, row.masked_fill(~is_best, key.numel()), reduce="amin")
        keep = (is_best & (first[key] == row)).view_as(selected)  # (T, k)
        target_row, rank = keep.nonzero(as_tuple=True)
        return Matches(pair[target_row], top_query[target_row, rank], slot[target_row])


def _iou_cxcywh(pred: list[torch.Tensor], target: list[torch.Tensor], generalized: bool = False) -> torch.Tensor:
    """IoU (or generalised IoU) from broadcastable cxcywh planes (4 tensors each side); zero areas give no NaN.

    Written in place on four full-size buffers: on CPU, fresh large tensors cost page faults that
    dominate these cheap elementwise ops.
    """
    (pcx, pcy, pw, ph), (tcx, tcy, tw, th) = pred, target
    overlaps, spans = [], []
    for centre_p, size_p, centre_t, size_t in ((pcx, pw, tcx, tw), (pcy, ph, tcy, th)):
        low = torch.add(centre_p, size_p, alpha=-0.5).clamp_(min=torch.add(centre_t, size_t, alpha=-0.5))
        overlap = torch.add(centre_p, size_p, alpha=0.5).clamp_(max=torch.add(centre_t, size_t, alpha=0.5))
        overlap.sub_(low)  # signed overlap: min of the high ends minus max of the low ends
        span = torch.add(size_p, size_t, out=low).sub_(overlap)  # hull extent = both sizes minus the overlap
        overlaps.append(overlap.clamp_(min=0))
        spans.append(span)
    inter = overlaps[0].mul_(overlaps[1])
    hull = spans[0].mul_(spans[1]).clamp_(min=1e-12)
    union = torch.mul(pw, ph, out=overlaps[1]).add_(tw * th).sub_(inter).clamp_(min=1e-12)
    iou = inter.div_(union)
    if not generalized:
        return iou
    # GIoU = IoU - (hull - union) / hull
    return iou.add_(union.sub_(hull).div_(hull))


def _focal_cost(log_p: torch.Tensor, log_one_minus_p: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Binary focal cost of calling a query positive: focal loss as positive minus as negative."""
    p = log_p.exp()
    positive = -alpha * (1 - p).pow(gamma) * log_p
    negative = -(1 - alpha) * p.pow(gamma) * log_one_minus_p
    return positive - negative
