"""SetCriterion: hand-computed terms, normalisation, sharding exactness, invariances, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sam3.loss import ClassificationLoss, HungarianMatcher, LossWeights, MaskLoss, OneToManyMatcher, SetCriterion
from sam3.loss.normalization import LossCounts, LossNormalization
from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import BitMasks, DetectorOutput, PairIndex, PairTargets

SMALL_MASKS = MaskLoss(num_points=64, oversample_ratio=3.0, importance_sample_ratio=0.75)


def _criterion(masks: MaskLoss = SMALL_MASKS, **kwargs) -> SetCriterion:
    return SetCriterion(matcher=HungarianMatcher(), o2m_matcher=OneToManyMatcher(), masks=masks, **kwargs)


def _one_pair(mask_logit: float = 2.0) -> tuple[DetectorOutput, PairTargets]:
    """One pair, two queries, one visible target (and a padding slot); q0 overlaps it, q1 is far."""
    target = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.1, 0.1, 0.1, 0.1]]], requires_grad=True)
    logits = torch.tensor([[[1.0], [-1.0]]], requires_grad=True)
    masks = torch.full((1, 2, 4, 4), mask_logit, requires_grad=True)
    output = DetectorOutput(
        pred_logits=logits,
        pred_boxes=boxes,
        pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes),
        presence_logit_dec=torch.tensor([[0.5]], requires_grad=True),
        pred_masks=masks,
    )
    zero = torch.zeros(1, dtype=torch.int64)
    targets = PairTargets(
        pairs=PairIndex(zero, zero, zero + 3, zero, zero),
        boxes_padded=target,
        is_visible_padded=torch.tensor([[True, False]]),
        object_ids_padded=torch.tensor([[0, -1]]),
        num_boxes=torch.tensor([1]),
        num_instances=torch.tensor([1]),
        is_exhaustive=torch.tensor([True]),
        is_positive=torch.tensor([True]),
        masks=BitMasks.pack(torch.ones(1, 8, 8, dtype=torch.bool)),  # slot 0, the only visible one
    )
    return output, targets


def test_each_term_against_hand_computation() -> None:
    output, targets = _one_pair(mask_logit=2.0)
    # As if this pair were one of a step's G = 4 pairs with N = 2 boxes, on one of W = 3 ranks.
    counts = LossCounts(num_boxes=2, num_pairs=4, num_exhaustive_pairs=4, num_nonexhaustive_boxes=0)
    total, parts = _criterion()(output, targets, LossNormalization(counts, scale=3.0))
    norm = 3.0 / 2.0  # W / N
    entry_norm = 3.0 / (4 * 2)  # W / (G Q)
    pair_norm = 3.0 / 4  # W / G
    # Boxes: q0 is matched. L1 |0.2 - 0.4| = 0.2; q0 xyxy (.3,.4,.7,.6) lies inside the target (.3,.3,.7,.7):
    # IoU = GIoU = 0.5.
    assert parts["loss_bbox"].item() == pytest.approx(norm * 0.2, rel=1e-5)
    assert parts["loss_giou"].item() == pytest.approx(norm * 0.5, rel=1e-5)
    # IoU-aware BCE: target t = p0^0.25 * 0.5^0.75 for q0 (weight 10); q1 is a negative weighted by p1^2;
    # divided by the step's G * Q entries.
    p0, p1 = torch.sigmoid(torch.tensor(1.0)), torch.sigmoid(torch.tensor(-1.0))
    t = p0**0.25 * 0.5**0.75
    positive = -(t * torch.log(p0) + (1 - t) * torch.log(1 - p0)) * 10
    negative = -torch.log(1 - p1) * p1**2
    assert parts["loss_ce"].item() == pytest.approx(entry_norm * (positive + negative).item(), rel=1e-5)
    # Presence: 0.5 * BCE(0.5, 1).
    assert parts["presence_loss"].item() == pytest.approx(
        pair_norm * 0.5 * F.softplus(torch.tensor(-0.5)).item(), rel=1e-5
    )
    # Masks: constant logit 2 against a full mask at every sampled point.
    pm = torch.sigmoid(torch.tensor(2.0))
    focal = 0.25 * (1 - pm) ** 2 * -torch.log(pm)
    points = SMALL_MASKS.num_points
    dice = 1 - (2 * points * pm + 1) / (points * pm + points + 1)
    assert parts["loss_mask"].item() == pytest.approx(norm * focal.item(), rel=1e-5)
    assert parts["loss_dice"].item() == pytest.approx(norm * dice.item(), rel=1e-5)
    weights = LossWeights()
    expected_total = sum(getattr(weights, name) * value for name, value in parts.items())
    assert total.item() == pytest.approx(float(expected_total), rel=1e-5)


def test_total_is_weighted_sum_with_o2m_weight(problem) -> None:
    outputs, targets = problem(seed=1, mask_size=8, target_mask_size=16)
    weights = LossWeights(loss_ce=3.0, presence_loss=0.5, loss_bbox=1.5, loss_giou=2.5, loss_mask=7.0, loss_dice=0.3)
    total, parts = _criterion(weights=weights, o2m_weight=4.0)(outputs, targets, LossNormalization.local(targets))
    expected = 0.0
    for name, value in parts.items():
        term = next(t for t in dataclasses.asdict(weights) if name.startswith(t))
        expected += getattr(weights, term) * (4.0 if name.endswith("_o2m") else 1.0) * value
    assert total.item() == pytest.approx(float(expected), rel=1e-5)
    names = set(parts)
    expected_names = {"loss_ce", "loss_ce_o2m", "loss_ce_aux_0", "loss_ce_aux_1_o2m", "presence_loss_aux_1"}
    assert expected_names | {"loss_mask", "loss_dice_o2m"} <= names
    assert "presence_loss_o2m" not in names and "loss_mask_aux_0" not in names
    assert all(not v.requires_grad for v in parts.values())


@pytest.mark.parametrize("with_masks", [False, True])
def test_split_batch_sums_to_whole_batch(problem, pair_subset, with_masks: bool) -> None:
    """Pairs split over two 'ranks' with the global N: the halves add up to the whole (exact sharding)."""
    outputs, targets = problem(
        seed=2, num_pairs=8, mask_size=8 if with_masks else None, target_mask_size=12 if with_masks else None
    )
    criterion = _criterion()
    norm = LossNormalization.local(targets)
    whole, whole_parts = criterion(outputs, targets, norm, step=7)
    halves = [torch.tensor([0, 3, 4, 7]), torch.tensor([1, 2, 5, 6])]
    split = [criterion(pair_subset(outputs, i), pair_subset(targets, i), norm, step=7) for i in halves]
    assert (split[0][0] + split[1][0]).item() == pytest.approx(whole.item(), rel=1e-5)
    for name, value in whole_parts.items():
        assert (split[0][1][name] + split[1][1][name]).item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7)
    # With the loss scale W = 2, the average of the two ranks' losses is the same objective.
    scaled = [
        criterion(pair_subset(outputs, i), pair_subset(targets, i), dataclasses.replace(norm, scale=2.0), step=7)[0]
        for i in halves
    ]
    assert ((scaled[0] + scaled[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-5)


def test_target_slot_permutation_leaves_loss_unchanged(problem) -> None:
    outputs, targets = problem(seed=5, mask_size=8, target_mask_size=16)
    perm = torch.tensor([3, 0, 4, 1, 2])
    padded = torch.zeros(*targets.is_visible_padded.shape, 16, 16, dtype=torch.bool)
    padded[targets.is_visible_padded] = targets.packed_masks
    permuted = dataclasses.replace(
        targets,
        boxes_padded=targets.boxes_padded[:, perm],
        is_visible_padded=targets.is_visible_padded[:, perm],
        object_ids_padded=targets.object_ids_padded[:, perm],
        masks=BitMasks.pack(padded[:, perm][targets.is_visible_padded[:, perm]]),
    )
    criterion = _criterion()
    total, _ = criterion(outputs, targets, LossNormalization.local(targets), step=1)
    total_permuted, _ = criterion(outputs, permuted, LossNormalization.local(targets), step=1)
    assert total_permuted.item() == pytest.approx(total.item(), rel=1e-5)


def test_perfect_predictions_give_near_zero_box_and_mask_losses(problem) -> None:
    _, targets = problem(seed=6, num_pairs=4, num_queries=8, num_slots=4, target_mask_size=64)
    num_pairs, num_queries = 4, 8
    boxes = torch.full((num_pairs, num_queries, 4), 0.05)
    boxes[..., :2] = 0.97  # unmatched queries sit in a corner
    logits = torch.full((num_pairs, num_queries, 1), -12.0)
    mask_logits = torch.full((num_pairs, num_queries, 64, 64), -30.0)
    for pair in range(num_pairs):
        for slot in targets.is_visible_padded[pair].nonzero().flatten().tolist():
            boxes[pair, slot] = targets.boxes_padded[pair, slot]
            logits[pair, slot] = 12.0
            target_mask = targets.masks.unpack(targets.mask_rows(torch.tensor([pair]), torch.tensor([slot])))[0]
            mask_logits[pair, slot] = torch.where(target_mask, 30.0, -30.0)
    output = DetectorOutput(
        pred_logits=logits,
        pred_boxes=boxes,
        pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes),
        presence_logit_dec=torch.where(targets.num_boxes > 0, 12.0, -12.0).float()[:, None],
        pred_masks=mask_logits,
    )
    uniform_points = MaskLoss(num_points=2048, importance_sample_ratio=0.0)
    _, parts = _criterion(masks=uniform_points)(output, targets, LossNormalization.local(targets))
    assert targets.total_boxes > 0
    assert parts["loss_bbox"].item() < 1e-6 and parts["loss_giou"].item() < 1e-5
    assert parts["loss_mask"].item() < 1e-2 and parts["loss_dice"].item() < 5e-2  # only boundary points blend
    assert parts["presence_loss"].item() < 1e-4 and parts["loss_ce"].item() < 1e-3


def test_gradients_are_finite_and_reach_every_head(problem) -> None:
    outputs, targets = problem(seed=7, mask_size=8, target_mask_size=16)
    total, _ = _criterion()(outputs, targets, LossNormalization.local(targets))
    total.backward()
    heads = [outputs, outputs.o2m, *outputs.aux_outputs, *outputs.o2m.aux_outputs]
    for head in heads:
        for tensor in (head.pred_logits, head.pred_boxes):
            assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    assert torch.isfinite(outputs.pred_masks.grad).all() and outputs.pred_masks.grad.abs().sum() > 0
    assert outputs.presence_logit_dec.grad.abs().sum() > 0


def test_no_classification_loss_without_visible_target_and_no_negatives_when_not_exhaustive(problem) -> None:
    outputs, targets = problem(seed=8, num_pairs=6, num_aux=0)
    targets.is_visible_padded[0] = False
    targets.num_boxes[0] = 0
    targets.is_exhaustive[1] = False
    targets.is_exhaustive[2] = True
    assert targets.num_boxes[1] > 0 and targets.num_boxes[2] > 0
    grad = torch.autograd.grad(_ce_only(outputs, targets), outputs.pred_logits)[0]
    assert grad[0].abs().sum() == 0  # no visible target: no classification loss
    matches = HungarianMatcher()(outputs, targets)
    matched_q1 = set(matches.query_idx[matches.pair_idx == 1].tolist())
    unmatched_q1 = [q for q in range(outputs.num_queries) if q not in matched_q1]
    assert grad[1, unmatched_q1].abs().sum() == 0 and grad[1, sorted(matched_q1)].abs().sum() > 0
    assert grad[2].abs().min() > 0  # exhaustive: every query is supervised


def _ce_only(outputs: DetectorOutput, targets: PairTargets) -> torch.Tensor:
    criterion = _criterion(weights=LossWeights(presence_loss=0, loss_bbox=0, loss_giou=0, loss_mask=0, loss_dice=0))
    plain = DetectorOutput(
        pred_logits=outputs.pred_logits,
        pred_boxes=outputs.pred_boxes,
        pred_boxes_xyxy=outputs.pred_boxes_xyxy,
        presence_logit_dec=outputs.presence_logit_dec,
    )
    return criterion(plain, targets, LossNormalization.local(targets))[0]


def test_mask_loss_is_zero_without_target_masks(problem) -> None:
    outputs, targets = problem(seed=9, mask_size=8)
    assert targets.masks is None
    total, parts = _criterion()(outputs, targets, LossNormalization.local(targets))
    assert parts["loss_mask"].item() == 0 and parts["loss_dice"].item() == 0
    total.backward()
    assert outputs.pred_masks.grad is not None


def test_mask_points_depend_on_step_only_through_the_key(problem) -> None:
    outputs, targets = problem(seed=10, mask_size=8, target_mask_size=16)
    criterion = _criterion()
    norm = LossNormalization.local(targets)
    a = criterion(outputs, targets, norm, step=3)[1]["loss_mask"]
    b = criterion(outputs, targets, norm, step=3)[1]["loss_mask"]
    c = criterion(outputs, targets, norm, step=4)[1]["loss_mask"]
    assert a.item() == b.item() and a.item() != c.item()
    # Two clips with the same frame, prompt and object ids get different points: the clip key counts.
    other_clip = dataclasses.replace(targets, clip_keys=torch.tensor([12345]))
    assert criterion(outputs, other_clip, norm, step=3)[1]["loss_mask"].item() != a.item()


@pytest.mark.gpu
def test_cuda_equals_cpu(problem) -> None:
    outputs, targets = problem(seed=11, num_pairs=8, mask_size=8, target_mask_size=16)
    criterion = _criterion()
    norm = LossNormalization.local(targets)
    cpu_total, cpu_parts = criterion(outputs, targets, norm, step=2)
    gpu_total, gpu_parts = criterion(outputs.to("cuda"), targets.to("cuda"), norm, step=2)
    assert gpu_total.item() == pytest.approx(cpu_total.item(), rel=1e-4)
    for name, value in cpu_parts.items():
        assert gpu_parts[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6)


def test_weak_loss_off_supervises_every_entry_and_divides_by_all_of_them(problem) -> None:
    outputs, targets = problem(seed=12, num_pairs=6, num_aux=0)
    targets.is_visible_padded[0] = False
    targets.num_boxes[0] = 0
    targets.is_exhaustive[1] = False
    strong = _criterion(classification=ClassificationLoss(weak_loss=False))
    ce_weights = LossWeights(presence_loss=0, loss_bbox=0, loss_giou=0, loss_mask=0, loss_dice=0)
    plain = DetectorOutput(
        pred_logits=outputs.pred_logits,
        pred_boxes=outputs.pred_boxes,
        pred_boxes_xyxy=outputs.pred_boxes_xyxy,
        presence_logit_dec=outputs.presence_logit_dec,
    )
    norm = LossNormalization.local(targets)
    _, strong_parts = _criterion(weights=ce_weights, classification=ClassificationLoss(weak_loss=False))(
        plain, targets, norm
    )
    _, weak_parts = _criterion(weights=ce_weights)(plain, targets, norm)
    grad = torch.autograd.grad(strong(plain, targets, norm)[0], outputs.pred_logits)[0]
    assert grad[1].abs().min() > 0  # non-exhaustive, but every query is supervised
    assert grad[0].abs().sum() == 0  # still nothing without a visible target
    # Denominators: G Q entries without weak loss; Q per exhaustive pair + one per box otherwise.
    num_pairs, num_queries = targets.num_boxes.numel(), outputs.num_queries
    exhaustive = targets.is_exhaustive
    kept = num_queries * int(exhaustive.sum()) + int(targets.num_boxes[~exhaustive].sum())
    strong_sum = strong_parts["loss_ce"] * num_pairs * num_queries
    weak_sum = weak_parts["loss_ce"] * kept
    # The weak sum leaves out pair 1's unmatched queries, which the strong sum holds.
    assert 0 < weak_sum.item() < strong_sum.item()
    counts = LossCounts.of(targets)
    assert (counts.num_pairs, counts.num_exhaustive_pairs) == (num_pairs, int(exhaustive.sum()))
    assert norm.entry_norm(num_queries, weak_loss=True) == pytest.approx(1 / kept)


def test_dense_mask_loss_upsamples_logits_to_the_target_resolution(problem) -> None:
    outputs, targets = problem(seed=13, num_pairs=4, num_aux=0, mask_size=8, target_mask_size=16)
    criterion = _criterion(masks=MaskLoss(num_points=None))
    norm = LossNormalization.local(targets)
    _, parts = criterion(outputs, targets, norm)
    matches = HungarianMatcher()(outputs, targets)
    src = outputs.pred_masks[matches.pair_idx, matches.query_idx][:, None]
    src = F.interpolate(src, size=(16, 16), mode="bilinear", align_corners=False).flatten(1)
    tgt = targets.masks.unpack(targets.mask_rows(matches.pair_idx, matches.target_idx)).flatten(1).float()
    prob = src.sigmoid()
    ce = F.binary_cross_entropy_with_logits(src, tgt, reduction="none")
    p_t = prob * tgt + (1 - prob) * (1 - tgt)
    focal = ((0.25 * tgt + 0.75 * (1 - tgt)) * ce * (1 - p_t) ** 2).mean(1).sum()
    dice = (1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)).sum()
    assert parts["loss_mask"].item() == pytest.approx(focal.item() * norm.box_norm, rel=1e-5)
    assert parts["loss_dice"].item() == pytest.approx(dice.item() * norm.box_norm, rel=1e-5)


def test_sqrt_pairs_scale_keeps_split_equal_to_whole(problem, pair_subset) -> None:
    outputs, targets = problem(seed=14, num_pairs=8, num_aux=0)
    norm = LossNormalization.local(targets)
    plain_total, _ = _criterion()(outputs, targets, norm)
    scaled = _criterion(scale_by_sqrt_pairs=True)
    whole, _ = scaled(outputs, targets, norm)
    assert whole.item() == pytest.approx(plain_total.item() * 8**0.5, rel=1e-5)
    halves = [torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])]
    ranks = [
        scaled(pair_subset(outputs, i), pair_subset(targets, i), dataclasses.replace(norm, scale=2.0))[0]
        for i in halves
    ]
    assert ((ranks[0] + ranks[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-5)
