"""Hungarian and one-to-many matchers: optimality, batching, empty and degenerate cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sam3.loss.matcher import HungarianMatcher, OneToManyMatcher
from sam3.ops.boxes import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from sam3.structures import DetectorOutput, PairIndex, PairTargets


def _output(logits: torch.Tensor, boxes: torch.Tensor) -> DetectorOutput:
    return DetectorOutput(pred_logits=logits.unsqueeze(-1), pred_boxes=boxes, pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes))


def _targets(boxes: torch.Tensor, visible: torch.Tensor) -> PairTargets:
    num_pairs, num_slots = visible.shape
    index = torch.arange(num_pairs)
    return PairTargets(
        pairs=PairIndex(index * 0, index, index, index * 0, index * 0),
        boxes_padded=torch.where(visible[..., None], boxes, torch.zeros(())),
        is_visible_padded=visible,
        object_ids_padded=torch.arange(num_slots).expand(num_pairs, -1).clone(),
        num_boxes=visible.sum(1),
        num_instances=torch.full((num_pairs,), num_slots),
        is_exhaustive=torch.ones(num_pairs, dtype=torch.bool),
        is_positive=visible.any(1),
    )


def _brute_force_cost(cost: torch.Tensor) -> float:
    """Minimum total cost over all injective assignments of an (N, Q) target-major cost matrix."""
    num_targets, num_queries = cost.shape
    best = math.inf
    if num_targets <= num_queries:
        for queries in itertools.permutations(range(num_queries), num_targets):
            best = min(best, sum(float(cost[t, q]) for t, q in enumerate(queries)))
    else:
        for targets in itertools.permutations(range(num_targets), num_queries):
            best = min(best, sum(float(cost[t, q]) for q, t in enumerate(targets)))
    return best


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(problem_generator, seed: int, stable: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    num_queries = int(torch.randint(1, 6, (1,), generator=g))
    num_slots = int(torch.randint(1, 6, (1,), generator=g))  # sometimes more targets than queries
    logits, boxes, target_boxes, visible = problem_generator(g, 3, num_queries, num_slots)
    matcher = HungarianMatcher(stable=stable)
    matches = matcher(_output(logits, boxes), _targets(target_boxes, visible))
    cost = matcher.cost(logits, boxes, target_boxes)  # (Npairs, N, Q)
    for pair in range(3):
        rows = visible[pair].nonzero().flatten()
        mine = matches.pair_idx == pair
        queries, slots = matches.query_idx[mine], matches.target_idx[mine]
        assert len(queries) == min(len(rows), num_queries)
        assert len(set(queries.tolist())) == len(queries), "a query is matched twice"
        assert len(set(slots.tolist())) == len(slots), "a target is matched twice"
        assert visible[pair, slots].all(), "an invisible slot was matched"
        if len(rows) == 0:
            continue
        total = float(cost[pair, slots, queries].sum())
        assert total == pytest.approx(_brute_force_cost(cost[pair][rows]), abs=1e-4)


def test_cost_matches_formula() -> None:
    logit = torch.tensor([[0.7]])
    box, target = torch.tensor([[[0.4, 0.5, 0.2, 0.3]]]), torch.tensor([[[0.5, 0.5, 0.3, 0.2]]])
    p = torch.sigmoid(logit)
    focal = -0.25 * (1 - p) ** 2 * torch.log(p) + 0.75 * p**2 * torch.log(1 - p)
    l1 = (box - target).abs().sum()
    giou = generalized_box_iou(box_cxcywh_to_xyxy(box[0]), box_cxcywh_to_xyxy(target[0]))
    expected = 2 * focal + 5 * l1 - 2 * giou
    assert HungarianMatcher().cost(logit, box, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # Stable: p is scaled by (GIoU + 1) / 2 before the focal cost.
    ps = p * (giou + 1) / 2
    focal_s = -0.25 * (1 - ps) ** 2 * torch.log(ps) + 0.75 * ps**2 * torch.log(1 - ps)
    expected_s = 2 * focal_s + 5 * l1 - 2 * giou
    assert HungarianMatcher(stable=True).cost(logit, box, target).item() == pytest.approx(expected_s.item(), rel=1e-5)


def test_cost_matrix_matches_torchvision(generator) -> None:
    logits = torch.randn(7, generator=generator)
    boxes = torch.rand(7, 4, generator=generator) * 0.4 + 0.1
    targets = torch.rand(5, 4, generator=generator) * 0.4 + 0.1
    p = logits.sigmoid()
    focal = -0.25 * (1 - p) ** 2 * p.log() + 0.75 * p**2 * (1 - p).log()  # (Q,)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(targets), box_cxcywh_to_xyxy(boxes))  # (N, Q)
    expected = 2 * focal[None] + 5 * torch.cdist(targets, boxes, p=1) - 2 * giou
    torch.testing.assert_close(HungarianMatcher().cost(logits, boxes, targets), expected, rtol=1e-5, atol=1e-5)


def test_batched_equals_per_pair(problem) -> None:
    outputs, targets = problem(seed=3, num_pairs=10, num_queries=15, num_slots=6)
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    for pair in range(10):
        one = slice(pair, pair + 1)
        single = matcher(
            _output(outputs.pred_logits[one].squeeze(-1), outputs.pred_boxes[one]),
            _targets(targets.boxes_padded[one], targets.is_visible_padded[one]),
        )
        mine = batched.pair_idx == pair
        assert batched.query_idx[mine].tolist() == single.query_idx.tolist()
        assert batched.target_idx[mine].tolist() == single.target_idx.tolist()


def test_match_heads_equals_separate_calls(problem) -> None:
    outputs, targets = problem(seed=4, num_aux=3)
    heads = [outputs, *outputs.aux_outputs]
    matcher = HungarianMatcher()
    for together, head in zip(matcher.match_heads(heads, targets), heads, strict=True):
        alone = matcher(head, targets)
        for field in ("pair_idx", "query_idx", "target_idx"):
            assert torch.equal(getattr(together, field), getattr(alone, field))


def test_empty_and_invisible_targets(generator) -> None:
    logits, boxes = torch.randn(3, 4, generator=generator), torch.rand(3, 4, 4, generator=generator) * 0.3 + 0.2
    matcher = HungarianMatcher()
    no_slots = matcher(_output(logits, boxes), _targets(torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool)))
    assert len(no_slots) == 0
    visible = torch.tensor([[False, False], [True, False], [False, True]])
    target_boxes = torch.rand(3, 2, 4, generator=generator) * 0.3 + 0.2
    matches = matcher(_output(logits, boxes), _targets(target_boxes, visible))
    assert matches.pair_idx.tolist() == [1, 2]
    assert matches.target_idx.tolist() == [0, 1]
    none_visible = matcher(_output(logits, boxes), _targets(target_boxes, torch.zeros(3, 2, dtype=torch.bool)))
    assert len(none_visible) == 0


def test_more_targets_than_queries(generator) -> None:
    logits, boxes = torch.randn(1, 2, generator=generator), torch.rand(1, 2, 4, generator=generator) * 0.3 + 0.2
    target_boxes = torch.rand(1, 5, 4, generator=generator) * 0.3 + 0.2
    matches = HungarianMatcher()(_output(logits, boxes), _targets(target_boxes, torch.ones(1, 5, dtype=torch.bool)))
    assert sorted(matches.query_idx.tolist()) == [0, 1]
    assert len(set(matches.target_idx.tolist())) == 2


def test_non_finite_cost_raises(generator) -> None:
    logits, boxes = torch.randn(2, 3, generator=generator), torch.rand(2, 3, 4, generator=generator) * 0.3 + 0.2
    boxes[1, 2, 0] = float("nan")
    target_boxes = torch.rand(2, 2, 4, generator=generator) * 0.3 + 0.2
    with pytest.raises(ValueError, match="pair 1"):
        HungarianMatcher()(_output(logits, boxes), _targets(target_boxes, torch.ones(2, 2, dtype=torch.bool)))


def _o2m_reference(prob, iou, visible, alpha, threshold, topk, unique_queries):
    """Per-target loop: top-k queries above the threshold, then (unique) each query kept by its best target."""
    num_pairs, num_queries, num_slots = iou.shape
    chosen = {}
    every = []
    for pair in range(num_pairs):
        for slot in range(num_slots):
            if not visible[pair, slot]:
                continue
            score = alpha * prob[pair] + (1 - alpha) * iou[pair, :, slot]
            for query in score.argsort(descending=True)[:topk].tolist():
                if score[query] > threshold:
                    every.append((pair, query, slot))
                    key = (pair, query)
                    if key not in chosen or score[query] > chosen[key][1]:
                        chosen[key] = (slot, float(score[query]))
    if not unique_queries:
        return sorted(every)
    return sorted((p, q, s) for (p, q), (s, _) in chosen.items())


@pytest.mark.parametrize("unique_queries", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_one_to_many_matches_reference(problem_generator, seed: int, unique_queries: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    logits, boxes, target_boxes, visible = problem_generator(g, 4, 30, 6, spread=0.15)
    matcher = OneToManyMatcher(alpha=0.3, threshold=0.3, topk=4, unique_queries=unique_queries)
    matches = matcher(_output(logits, boxes), _targets(target_boxes, visible))
    pairs_queries = list(zip(matches.pair_idx.tolist(), matches.query_idx.tolist(), strict=True))
    if unique_queries:
        assert len(pairs_queries) == len(set(pairs_queries)), "a query was assigned twice"
    assert visible[matches.pair_idx, matches.target_idx].all()
    iou = torch.stack(
        [box_iou(box_cxcywh_to_xyxy(b), box_cxcywh_to_xyxy(t)) for b, t in zip(boxes, target_boxes, strict=True)]
    )
    expected = _o2m_reference(logits.sigmoid(), iou, visible, 0.3, 0.3, 4, unique_queries)
    got = sorted(zip(matches.pair_idx.tolist(), matches.query_idx.tolist(), matches.target_idx.tolist(), strict=True))
    assert got == expected
    assert len(got) > 0


@pytest.mark.parametrize("unique_queries", [False, True])
def test_one_to_many_overlapping_targets(unique_queries: bool) -> None:
    # Two identical targets: every top query is selected by both. SAM3 gives each query to both;
    # with unique queries each goes to one target only.
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])
    target_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.21, 0.2]]])
    matches = OneToManyMatcher(alpha=0.3, threshold=0.4, topk=3, unique_queries=unique_queries)(
        _output(torch.zeros(1, 3), boxes), _targets(target_boxes, torch.ones(1, 2, dtype=torch.bool))
    )
    if unique_queries:
        assert sorted(matches.query_idx.tolist()) == [0, 1, 2]
        assert matches.target_idx.tolist() == [0, 0, 0]  # slot 0 is the exact match
    else:
        assert sorted(zip(matches.target_idx.tolist(), matches.query_idx.tolist(), strict=True)) == [
            (t, q) for t in (0, 1) for q in range(3)
        ]


@pytest.fixture
def problem_generator():
    """(logits (Np, Q), boxes (Np, Q, 4), target boxes (Np, N, 4), visible (Np, N))."""

    def build(g: torch.Generator, num_pairs: int, num_queries: int, num_slots: int, spread: float = 0.5):
        def boxes(*shape):
            wh = 0.05 + spread * torch.rand(*shape, 2, generator=g)
            return torch.cat([wh / 2 + (1 - wh) * torch.rand(*shape, 2, generator=g), wh], -1)

        visible = torch.rand(num_pairs, num_slots, generator=g) < 0.75
        visible[0] = False  # an all-invisible frame
        return (
            torch.randn(num_pairs, num_queries, generator=g),
            boxes(num_pairs, num_queries),
            boxes(num_pairs, num_slots),
            visible,
        )

    return build
