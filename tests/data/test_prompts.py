"""Prompts of a clip: positives, negatives, sampled negatives, caps and the exhaustive flag."""

from __future__ import annotations

import numpy as np
import pytest

from sam3.data.index import Masklet, PhrasePair
from sam3.data.prompts import PromptConfig, select_prompts

BOX = [1.0, 1.0, 2.0, 2.0]


def _masklet(ann_id: int, category_id: int, frames: list[int], crowd: bool = False) -> Masklet:
    boxes = [BOX if t in frames else None for t in range(6)]
    return Masklet(ann_id, category_id, f"phrase {category_id}", boxes, None, is_crowd=crowd)


PAIRS = [
    PhrasePair(1, "cat", 2),
    PhrasePair(2, "dog", 1),
    PhrasePair(3, "bird", 0),
    PhrasePair(4, "crowd", 2),
    PhrasePair(5, "fish", 3),
]
MASKLETS = [
    _masklet(10, 1, [0, 1]),
    _masklet(11, 1, [4]),
    _masklet(12, 2, [5]),  # not visible in frames 0-3
    _masklet(13, 4, [0], crowd=True),
    _masklet(14, 4, [1]),
    _masklet(15, 5, [0]),
    _masklet(16, 5, [1]),
    _masklet(17, 5, [2]),
]


def test_positives_negatives_and_flags():
    prompts = select_prompts(PAIRS, MASKLETS, [0, 1, 2, 3], PromptConfig(shuffle=False), np.random.default_rng(0))
    by_phrase = {p.phrase: p for p in prompts}
    assert [p.phrase for p in prompts] == ["cat", "crowd", "fish", "dog", "bird"]  # positives first
    assert by_phrase["cat"].masklets == [0] and by_phrase["cat"].is_positive and by_phrase["cat"].is_exhaustive
    # Annotated for the video but not visible in the clip: a negative of this clip.
    assert by_phrase["dog"].masklets == [] and not by_phrase["dog"].is_positive and by_phrase["dog"].is_exhaustive
    assert not by_phrase["bird"].is_positive and by_phrase["bird"].is_exhaustive
    # Crowd masklets are never targets, and their prompt is not exhaustive.
    assert by_phrase["crowd"].masklets == [4] and not by_phrase["crowd"].is_exhaustive


def test_caps_keep_positives_and_mark_truncated_prompts():
    config = PromptConfig(max_prompts=3, max_masklets=4, shuffle=False)
    prompts = select_prompts(PAIRS, MASKLETS, [0, 1, 2, 3], config, np.random.default_rng(0))
    assert [p.phrase for p in prompts] == ["cat", "crowd", "fish"]
    assert [len(p.masklets) for p in prompts] == [1, 1, 2]
    assert not prompts[2].is_exhaustive and prompts[2].is_positive
    # A present phrase whose every masklet falls to the cap is dropped, not turned into a negative.
    config = PromptConfig(max_masklets=1, shuffle=False)
    tight = select_prompts(PAIRS, MASKLETS, [0, 1, 2, 3], config, np.random.default_rng(0))
    assert [p.phrase for p in tight] == ["cat", "dog", "bird"]
    assert sum(len(p.masklets) for p in tight) == 1


def test_sampled_negatives_and_shuffle():
    config = PromptConfig(num_sampled_negatives=2)
    vocabulary = ["cat", "dog", "zebra", "lion", "fish"]
    prompts = select_prompts(PAIRS, MASKLETS, [0, 1], config, np.random.default_rng(3), vocabulary)
    extra = {p.phrase for p in prompts} - {p.phrase for p in PAIRS}
    assert extra == {"zebra", "lion"}
    assert all(not p.is_positive and p.is_exhaustive and not p.masklets for p in prompts if p.phrase in extra)
    orders = {
        tuple(p.phrase for p in select_prompts(PAIRS, MASKLETS, [0, 1], config, np.random.default_rng(s), vocabulary))
        for s in range(8)
    }
    assert len(orders) > 1
    with pytest.raises(ValueError, match="all_phrases"):
        select_prompts(PAIRS, MASKLETS, [0], config, np.random.default_rng(0))
