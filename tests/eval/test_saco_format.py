"""Reading SA-Co/VEval files: clear errors naming the record, uncompressed RLEs accepted."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam3.eval.saco_format import merge_prediction_shards, parse_ground_truth, parse_predictions
from tests.helpers import gt_as_predictions


def test_errors_name_the_record(veval_gt):
    gt = parse_ground_truth(veval_gt, source="gt.json")
    preds = gt_as_predictions(veval_gt)
    preds[1]["video_id"] = 99
    with pytest.raises(ValueError, match=r"preds.json: predictions\[1\]: video_id 99"):
        parse_predictions(preds, gt, source="preds.json")
    preds = gt_as_predictions(veval_gt)
    preds[2]["bboxes"] = preds[2]["bboxes"][:-1]
    with pytest.raises(ValueError, match=r"predictions\[2\]: bboxes, segmentations and areas have lengths"):
        parse_predictions(preds, gt)
    del veval_gt["annotations"][0]["bboxes"]
    with pytest.raises(ValueError, match=r"gt.json: annotations\[0\] \(id 11\): missing field\(s\) bboxes"):
        parse_ground_truth(veval_gt, source="gt.json")


def test_uncompressed_rle_is_compressed():
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[1:4, 2:4] = 1
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    ann = {
        "id": 1,
        "video_id": 0,
        "category_id": 1,
        "bboxes": [[2, 1, 2, 3]],
        "areas": [6],
        "segmentations": [{"size": [6, 5], "counts": counts}],
    }
    gt = parse_ground_truth(
        {"videos": [{"id": 0, "height": 6, "width": 5, "length": 1}], "annotations": [ann], "categories": []}
    )
    rle = gt.masklets[0].segmentations[0]
    assert isinstance(rle["counts"], str)
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded, mask)


def test_merge_prediction_shards_drops_padded_duplicates():
    a = {"video_id": 1, "category_id": 2, "score": 0.9}
    b = {"video_id": 1, "category_id": 2, "score": 0.5}
    c = {"video_id": 1, "category_id": 3, "score": 0.4}
    d = {"video_id": 4, "category_id": 2, "score": 0.8}
    # rank 0 holds pair (1, 2) with two masklets; rank 1 repeats it (sampler padding) and adds (1, 3)
    merged = merge_prediction_shards([[a, b, d], [dict(a), c], [dict(d)]])
    assert merged == [a, b, d, c]
