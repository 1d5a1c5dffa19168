"""The evaluation pipeline end to end: detector outputs -> post-processing -> linking -> file -> metrics."""

from __future__ import annotations

import torch

from sam3.eval.linking import LinkingConfig, link_video
from sam3.eval.postprocess import PostprocessConfig, postprocess
from sam3.eval.saco_format import load_predictions, parse_ground_truth, write_predictions
from sam3.eval.veval import evaluate_veval
from sam3.ops.boxes import box_xyxy_to_cxcywh
from sam3.ops.masks import masks_to_boxes_xyxy, rle_encode
from sam3.structures import DetectorOutput

S, T, Q = 24, 5, 4  # frame size (= mask size, so the resize is the identity), frames, queries


def _object_masks() -> torch.Tensor:
    """(2, T, S, S) two squares moving in opposite directions."""
    masks = torch.zeros(2, T, S, S, dtype=torch.bool)
    for t in range(T):
        masks[0, t, 2:8, 2 + 2 * t : 8 + 2 * t] = True
        masks[1, t, 14:20, 16 - 2 * t : 22 - 2 * t] = True
    return masks


def test_detector_outputs_to_perfect_metrics(tmp_path):
    objects = _object_masks()
    per_frame = []
    for t in range(T):
        logits = torch.full((1, Q, S, S), -8.0)
        scores = torch.full((1, Q, 1), -6.0)
        boxes = torch.zeros(1, Q, 4)
        for k, q in enumerate((2, 0)):  # objects sit on different queries, out of order
            logits[0, q][objects[k, t]] = 8.0
            scores[0, q] = 3.0
            boxes[0, q] = box_xyxy_to_cxcywh(masks_to_boxes_xyxy(objects[k, t]) / S)
        outputs = DetectorOutput(scores, boxes, boxes, torch.full((1, 1), 4.0), logits)
        per_frame.append(postprocess(outputs, torch.tensor([[S, S]]), PostprocessConfig(score_thresh=0.5))[0])
    records = link_video(0, [1], [[p] for p in per_frame], (S, S), LinkingConfig())
    write_predictions(records, tmp_path / "preds.json")

    annotations = []
    for k in range(2):
        rles = rle_encode(objects[k])
        boxes = masks_to_boxes_xyxy(objects[k])
        boxes[:, 2:] -= boxes[:, :2]
        annotations.append(
            {
                "id": k + 1,
                "video_id": 0,
                "category_id": 1,
                "segmentations": rles,
                "bboxes": boxes.tolist(),
                "areas": objects[k].flatten(1).sum(1).tolist(),
                "iscrowd": 0,
            }
        )
    gt = parse_ground_truth(
        {
            "videos": [{"id": 0, "height": S, "width": S, "length": T}],
            "annotations": annotations,
            "categories": [{"id": 1}, {"id": 2}],
            "video_np_pairs": [{"video_id": 0, "category_id": c} for c in (1, 2)],
        }
    )
    res = evaluate_veval(gt, load_predictions(tmp_path / "preds.json", gt))["dataset_results"]
    for key in (
        "video_mask_mAP_50_95",
        "video_bbox_mAP_50_95",
        "video_mask_all_phrase_HOTA",
        "video_bbox_all_phrase_AssA",
    ):
        assert res[key] == 1.0, key
    assert res["video_mask_teta"] == 100.0
