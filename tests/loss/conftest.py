"""Random (frame, prompt)-pair problems for the matcher and criterion tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import BitMasks, DetectorOutput, PairIndex, PairTargets


def random_boxes(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """(*shape, 4) valid normalised cxcywh boxes inside the image."""
    wh = 0.05 + 0.5 * torch.rand(*shape, 2, generator=generator)
    centre = wh / 2 + (1 - wh) * torch.rand(*shape, 2, generator=generator)
    return torch.cat([centre, wh], -1)


def make_targets(
    generator: torch.Generator,
    num_pairs: int,
    num_slots: int,
    visible_prob: float = 0.7,
    mask_size: int | None = None,
    num_prompts: int = 2,
) -> PairTargets:
    """Targets with random instance counts, invisible placeholders and (optionally) box-shaped masks."""
    num_instances = torch.randint(0, num_slots + 1, (num_pairs,), generator=generator)
    slot = torch.arange(num_slots)
    is_slot = slot[None] < num_instances[:, None]
    visible = is_slot & (torch.rand(num_pairs, num_slots, generator=generator) < visible_prob)
    boxes = torch.where(visible[..., None], random_boxes(generator, num_pairs, num_slots), torch.zeros(()))
    masks = None
    if mask_size is not None:
        xyxy = box_cxcywh_to_xyxy(boxes)
        centres = (torch.arange(mask_size) + 0.5) / mask_size
        inside_x = (centres >= xyxy[..., 0, None]) & (centres <= xyxy[..., 2, None])  # (Np, N, W)
        inside_y = (centres >= xyxy[..., 1, None]) & (centres <= xyxy[..., 3, None])  # (Np, N, H)
        masks = BitMasks.pack((inside_y[..., :, None] & inside_x[..., None, :])[visible])  # (Nvis, S, S)
    pair_ids = torch.arange(num_pairs)
    pairs = PairIndex(
        clip_idx=torch.zeros(num_pairs, dtype=torch.int64),
        frame_slot=pair_ids // num_prompts,
        frame_idx=pair_ids // num_prompts,
        prompt_idx=pair_ids % num_prompts,
        text_idx=pair_ids % num_prompts,
    )
    return PairTargets(
        pairs=pairs,
        boxes_padded=boxes,
        is_visible_padded=visible,
        object_ids_padded=torch.where(is_slot, slot[None].expand(num_pairs, -1), -1),
        num_boxes=visible.sum(1),
        num_instances=num_instances,
        is_exhaustive=torch.rand(num_pairs, generator=generator) < 0.7,
        is_positive=num_instances > 0,
        masks=masks,
    )


def make_output(
    generator: torch.Generator,
    num_pairs: int,
    num_queries: int,
    mask_size: int | None = None,
    with_presence: bool = True,
) -> DetectorOutput:
    """One head of random predictions (leaf tensors that require grad)."""
    logits = torch.randn(num_pairs, num_queries, 1, generator=generator).requires_grad_()
    boxes = random_boxes(generator, num_pairs, num_queries).requires_grad_()
    presence = torch.randn(num_pairs, 1, generator=generator).requires_grad_() if with_presence else None
    masks = None
    if mask_size is not None:
        masks = (3 * torch.randn(num_pairs, num_queries, mask_size, mask_size, generator=generator)).requires_grad_()
    return DetectorOutput(
        pred_logits=logits,
        pred_boxes=boxes,
        pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes),
        presence_logit_dec=presence,
        pred_masks=masks,
    )


def select_pairs(value, index: torch.Tensor):
    """The pairs `index` of a DetectorOutput or PairTargets (recursively for aux and o2m heads)."""
    if isinstance(value, DetectorOutput):
        return DetectorOutput(
            pred_logits=value.pred_logits[index],
            pred_boxes=value.pred_boxes[index],
            pred_boxes_xyxy=value.pred_boxes_xyxy[index],
            presence_logit_dec=None if value.presence_logit_dec is None else value.presence_logit_dec[index],
            pred_masks=None if value.pred_masks is None else value.pred_masks[index],
            aux_outputs=[select_pairs(aux, index) for aux in value.aux_outputs],
            o2m=None if value.o2m is None else select_pairs(value.o2m, index),
        )
    pairs = value.pairs
    return PairTargets(
        pairs=PairIndex(*(getattr(pairs, f.name)[index] for f in dataclasses.fields(pairs))),
        boxes_padded=value.boxes_padded[index],
        is_visible_padded=value.is_visible_padded[index],
        object_ids_padded=value.object_ids_padded[index],
        num_boxes=value.num_boxes[index],
        num_instances=value.num_instances[index],
        is_exhaustive=value.is_exhaustive[index],
        is_positive=value.is_positive[index],
        masks=None if value.masks is None else _select_masks(value, index),
        clip_keys=value.clip_keys,
    )


def _select_masks(targets: PairTargets, index: torch.Tensor) -> BitMasks:
    """The packed masks of the visible instances of pairs `index`, in their new pair order."""
    visible = targets.is_visible_padded
    rows = (visible.reshape(-1).cumsum(0) - 1).reshape(visible.shape)  # (Npairs, Nmax) packed row of each slot
    return dataclasses.replace(targets.masks, bits=targets.masks.bits[rows[index][visible[index]]])


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def problem() -> Callable[..., tuple[DetectorOutput, PairTargets]]:
    """Builds (outputs with aux layers and o2m heads, targets) from a seed."""

    def build(
        seed: int = 0,
        num_pairs: int = 6,
        num_queries: int = 12,
        num_slots: int = 5,
        num_aux: int = 2,
        mask_size: int | None = None,
        target_mask_size: int | None = None,
    ) -> tuple[DetectorOutput, PairTargets]:
        g = torch.Generator().manual_seed(seed)
        targets = make_targets(g, num_pairs, num_slots, mask_size=target_mask_size)
        # The model's layout: o2m carries its own aux layers and the shared presence logit.
        final = make_output(g, num_pairs, num_queries, mask_size)
        final.o2m = make_output(g, num_pairs, num_queries, mask_size)
        for _ in range(num_aux):
            final.aux_outputs.append(make_output(g, num_pairs, num_queries))
            final.o2m.aux_outputs.append(make_output(g, num_pairs, num_queries))
        return final, targets

    return build


@pytest.fixture
def pair_subset() -> Callable:
    """`select_pairs` as a fixture."""
    return select_pairs
