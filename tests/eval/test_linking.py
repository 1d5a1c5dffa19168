"""Masklet linking recovers the tracks of synthetic clips (objects move, cross partially, enter and leave)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3.eval.linking import FrameMasks, LinkingConfig, link_masklets, masklets_to_records
from sam3.eval.postprocess import FramePredictions
from sam3.eval.saco_format import parse_ground_truth, parse_predictions
from sam3.ops.masks import rle_encode

H, W, T = 40, 64, 12


def _disc(cx: float, cy: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _synthetic_clip(seed: int):
    """Three discs: two cross each other (partial overlap only), one enters late and one leaves early.

    Returns per-frame detections (shuffled order, plus a low-score spurious blob) and, per frame, the
    ground-truth track of each detection (-1 for the spurious one).
    """
    rng = np.random.default_rng(seed)
    tracks = [
        {"start": (8, 14), "vel": (4.0, 0.5), "r": 6, "frames": range(T)},
        {"start": (56, 22), "vel": (-4.0, 0.2), "r": 6, "frames": range(T)},  # crosses track 0 vertically offset
        {"start": (20, 33), "vel": (2.0, 0.0), "r": 4, "frames": range(4, T)},  # enters at frame 4
    ]
    tracks[0]["frames"] = range(0, T - 2)  # leaves 2 frames early
    frames, truth = [], []
    for t in range(T):
        masks, scores, ids = [], [], []
        for k, tr in enumerate(tracks):
            if t in tr["frames"]:
                cx = tr["start"][0] + tr["vel"][0] * t + rng.uniform(-0.5, 0.5)
                cy = tr["start"][1] + tr["vel"][1] * t
                masks.append(_disc(cx, cy, tr["r"]))
                scores.append(rng.uniform(0.6, 0.95))
                ids.append(k)
        if t % 3 == 1:  # a spurious low-score detection somewhere empty
            masks.append(_disc(rng.uniform(5, 60), 2, 2))
            scores.append(0.1)
            ids.append(-1)
        order = rng.permutation(len(masks))
        frames.append(FrameMasks(torch.stack([masks[i] for i in order]), torch.tensor([scores[i] for i in order])))
        truth.append([ids[i] for i in order])
    return frames, truth


def test_linking_recovers_ground_truth_tracks():
    for seed in range(3):
        frames, truth = _synthetic_clip(seed)
        masklets = link_masklets(frames, LinkingConfig(match_iou_thresh=0.3, birth_score_thresh=0.5))
        assert len(masklets) == 3
        recovered = []
        for m in masklets:
            ids = {truth[t][i] for t, i in enumerate(m.detection_idx) if i is not None}
            assert len(ids) == 1 and -1 not in ids  # no identity switch, no spurious detection
            recovered.append(ids.pop())
            expected_frames = [t for t in range(T) if recovered[-1] in truth[t]]
            assert [t for t, i in enumerate(m.detection_idx) if i is not None] == expected_frames
        assert sorted(recovered) == [0, 1, 2]


def test_gap_rule_bridges_a_missed_frame():
    masks = [_disc(20 + 2 * t, 20, 6) for t in range(5)]
    frames = [FrameMasks(masks[t][None], torch.tensor([0.9])) for t in (0, 1)]
    frames.append(FrameMasks(torch.zeros(0, H, W, dtype=torch.bool), torch.zeros(0)))  # missed at t=2
    frames += [FrameMasks(masks[t][None], torch.tensor([0.7])) for t in (3, 4)]
    strict = link_masklets(frames, LinkingConfig(max_gap=0))
    assert [m.detection_idx for m in strict] == [[0, 0, None, None, None], [None, None, None, 0, 0]]
    bridged = link_masklets(frames, LinkingConfig(max_gap=1, score_reduction="mean"))
    assert [m.detection_idx for m in bridged] == [[0, 0, None, 0, 0]]
    assert bridged[0].score == pytest.approx(0.8)
    assert link_masklets(frames, LinkingConfig(max_gap=0, min_length=3)) == []
    assert link_masklets(frames, LinkingConfig(max_gap=1, score_reduction="max"))[0].score == pytest.approx(0.9)


def test_records_follow_the_prediction_format():
    frames, _ = _synthetic_clip(0)
    masklets = link_masklets(frames, LinkingConfig(birth_score_thresh=0.5))
    preds = []
    for frame in frames:
        boxes = torch.zeros(len(frame.scores), 4)
        preds.append(
            FramePredictions(
                frame.scores,
                boxes,
                None,
                rle_encode(frame.masks),
                frame.masks.flatten(1).sum(1),
                torch.arange(len(frame.scores)),
            )
        )
    records = masklets_to_records(5, 2, preds, masklets)
    gt = parse_ground_truth(
        {"videos": [{"id": 5, "height": H, "width": W, "length": T}], "annotations": [], "categories": [{"id": 2}]}
    )
    parsed = parse_predictions(records, gt)
    assert len(parsed) == 3 and all(m.num_frames == T for m in parsed)
    assert parsed[2].segmentations[0] is None and parsed[2].segmentations[4] is not None


def test_motion_prediction_bridges_a_gap_of_a_moving_object():
    positions = [10, 13, 16, None, None, None, 28, 31]  # x of a radius-6 disc moving 3 px per frame
    frames = []
    for x in positions:
        if x is None:
            frames.append(FrameMasks(torch.zeros(0, H, W, dtype=torch.bool), torch.zeros(0)))
        else:
            frames.append(FrameMasks(_disc(x, 20, 6)[None], torch.tensor([0.8])))
    detected = [0 if x is not None else None for x in positions]
    still = link_masklets(frames, LinkingConfig(match_iou_thresh=0.5, max_gap=3))
    assert [m.detection_idx for m in still] == [detected[:3] + [None] * 5, [None] * 6 + detected[6:]]
    moving = link_masklets(frames, LinkingConfig(match_iou_thresh=0.5, max_gap=3, use_motion=True))
    assert [m.detection_idx for m in moving] == [detected]
