"""Loss functions of the set criterion as plain tensor functions, and rank-independent point sampling.

* `iou_aware_bce`: the classification loss of SAM3's detector (IoU-aware BCE, as in VarifocalNet /
  "IA-BCE"): a matched query regresses a soft target p^alpha * IoU^(1 - alpha), an unmatched one is
  pushed to 0 with weight p^gamma.
* `sigmoid_focal_loss` (RetinaNet) and `dice_loss` (V-Net) for masks and the presence logit.
* Point-sampled mask losses (PointRend, Kirillov et al. 2020; Mask2Former, Cheng et al. 2022): the
  losses are computed on sampled points, most of them where the prediction is uncertain. Instead of a
  global random stream, the points come from a counter-based hash of a per-mask key, so a mask's points
  depend only on its key (step, global frame index, prompt index, instance slot, head) and not on the
  rank or the batch that computes it.

All functions are elementwise or per-row; the criterion sums and normalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "iou_aware_bce",
    "sigmoid_focal_loss",
    "dice_loss",
    "sample_keys",
    "hash_uniform_points",
    "uncertain_point_coords",
    "point_sample_logits",
    "point_sample_bits",
]

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


def iou_aware_bce(
    logits: torch.Tensor,
    is_matched: torch.Tensor,
    soft_targets: torch.Tensor,
    pos_weight: float,
    gamma: float,
) -> torch.Tensor:
    """Elementwise IoU-aware binary cross-entropy.

    Args:
        logits: (...) class logits.
        is_matched: (...) bool; the query is matched to a target.
        soft_targets: (...) targets of matched queries in [0, 1] (ignored where unmatched), detached.
        pos_weight: weight of the matched queries' term.
        gamma: unmatched queries are weighted by p^gamma (p = sigmoid(logit)).

    Returns:
        (...) loss: pos_weight * BCE(logit, t) where matched, BCE(logit, 0) * p^gamma elsewhere.
    """
    positive = F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none") * pos_weight
    negative = F.softplus(logits) * logits.sigmoid().pow(gamma)
    return torch.where(is_matched, positive, negative)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise sigmoid focal loss; `alpha` < 0 disables the class balancing.

    Args:
        logits: (...) logits.
        targets: (...) targets in [0, 1].

    Returns:
        (...) alpha_t * (1 - p_t)^gamma * BCE(logit, target).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss per row with +1 smoothing.

    Args:
        logits: (M, P) mask logits at P points (or pixels).
        targets: (M, P) targets in [0, 1].

    Returns:
        (M,) 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1).
    """
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def sample_keys(*fields: torch.Tensor | int) -> torch.Tensor:
    """Hashes integer fields (tensors broadcast together, or ints) into one 32-bit key per element.

    Returns:
        int64 tensor of keys in [0, 2^32), shaped like the broadcast tensor fields.
    """
    tensors = [f for f in fields if isinstance(f, torch.Tensor)]
    if not tensors:
        raise ValueError("sample_keys: at least one field must be a tensor")
    key = torch.zeros_like(torch.broadcast_tensors(*tensors)[0], dtype=torch.int64)
    for value in fields:
        # Python ints stay scalars: no host-to-device copy.
        value = value.to(torch.int64) & _MASK32 if isinstance(value, torch.Tensor) else int(value) & _MASK32
        key = _mix32((key * 31 + value + _GOLDEN32) & _MASK32)
    return key


def hash_uniform_points(keys: torch.Tensor, num_points: int, offset: int = 0) -> torch.Tensor:
    """Deterministic pseudo-random points in [0, 1]^2, a function of (key, point counter) only.

    Args:
        keys: (M,) int64 keys from `sample_keys`.
        num_points: P, the number of points per key.
        offset: first point counter, to draw a further independent set for the same keys.

    Returns:
        (M, P, 2) float32 (x, y) coordinates with 2^-16 resolution.
    """
    counters = torch.arange(offset, offset + num_points, dtype=torch.int64, device=keys.device)
    bits = _mix32(_mix32((keys.unsqueeze(-1) ^ (counters * _GOLDEN32 & _MASK32)) & _MASK32) ^ 0x5BD1E995)
    coords = torch.stack([bits & 0xFFFF, bits >> 16], dim=-1)  # (M, P, 2)
    return (coords.float() + 0.5) / 65536.0


def uncertain_point_coords(
    mask_logits: torch.Tensor,
    keys: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """PointRend-style sampling: the most uncertain of oversampled points, plus uniform ones.

    Args:
        mask_logits: (M, h, w) predicted mask logits (only read, no gradient).
        keys: (M,) sampling keys, one per mask.
        num_points: P, points per mask.
        oversample_ratio: candidates per kept point (>= 1).
        importance_sample_ratio: share of the P points taken where |logit| is smallest.

    Returns:
        (M, P, 2) normalised (x, y) coordinates in [0, 1].
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"uncertain_point_coords: need oversample_ratio >= 1 and importance_sample_ratio in [0, 1], "
            f"got {oversample_ratio} and {importance_sample_ratio}"
        )
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = hash_uniform_points(keys, num_candidates)  # (M, S, 2)
    with torch.no_grad():
        uncertainty = -point_sample_logits(mask_logits.detach(), candidates).abs()  # (M, S)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (M, k)
    chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
    uniform = hash_uniform_points(keys, num_points - num_uncertain, offset=num_candidates)
    return torch.cat([chosen, uniform], dim=1)


def point_sample_logits(mask_logits: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of masks at normalised points (grid_sample, align_corners=False).

    Points within half a pixel of the border read the border pixels (border padding), where the
    official code blends in zeros; a constant mask thus reads its constant everywhere.

    Args:
        mask_logits: (M, h, w) float.
        coords: (M, P, 2) normalised (x, y) in [0, 1].

    Returns:
        (M, P) sampled values, differentiable with respect to `mask_logits`.
    """
    grid = (2 * coords - 1).unsqueeze(1).to(mask_logits.dtype)  # (M, 1, P, 2)
    sampled = F.grid_sample(mask_logits.unsqueeze(1), grid, padding_mode="border", align_corners=False)  # (M, 1, 1, P)
    return sampled.flatten(1)


def point_sample_bits(
    bits: torch.Tensor, height: int, width: int, mask_idx: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """Bilinear values of bit-packed boolean masks at normalised points, reading only the bits needed.

    Same convention as `point_sample_logits` (pixel centres at (i + 0.5) / size, border padding), so
    a point reads the same place of a target mask at any resolution.

    Args:
        bits: (K, ceil(H W / 8)) uint8 masks, one bit per pixel (`sam3.structures.BitMasks.bits`).
        height: H.
        width: W.
        mask_idx: (M,) int64; which mask each row of `coords` reads.
        coords: (M, P, 2) normalised (x, y) in [0, 1].

    Returns:
        (M, P) float32 values in [0, 1].
    """
    flat = bits.reshape(-1)
    px = coords[..., 0].float() * width - 0.5
    py = coords[..., 1].float() * height - 0.5
    x0, y0 = px.floor(), py.floor()
    wx, wy = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    base = (mask_idx * (bits.shape[1] * 8)).unsqueeze(-1)  # (M, 1) first bit of each mask
    out = torch.zeros_like(px)
    for dy, weight_y in ((0, 1 - wy), (1, wy)):
        for dx, weight_x in ((0, 1 - wx), (1, wx)):
            index = base + (y0 + dy).clamp(0, height - 1) * width + (x0 + dx).clamp(0, width - 1)
            value = (flat[index >> 3] >> (index & 7).to(torch.uint8)) & 1
            out = out + value.float() * weight_x * weight_y
    return out


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply); int64 in [0, 2^32) -> int64 in [0, 2^32).

    Multipliers stay below 2^31, so no product overflows int64 on any device.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)
