"""Readers: the public SA-Co/VEval toy GT, YouTube-VIS and COCO JSON into one index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sam3.data.readers import load_annotations
from sam3.ops.masks import rle_decode


def test_toy_saco_veval_gt_counts(veval_toy_dir):
    index = load_annotations(veval_toy_dir / "toy_saco_veval_sav_test_gt.json")
    assert index.format == "saco_veval"
    counts = index.counts()
    assert counts["videos"] == 1
    assert counts["frames"] == 146
    assert counts["masklets"] == 33
    assert counts["positive_pairs"] == 7
    assert counts["negative_pairs"] == 1
    assert len(index.phrases) == 51248
    pairs = {p.phrase: p.num_masklets for p in index.pairs[0]}
    assert pairs["air jordan"] == 12 and pairs["thick gold chain"] == 0 and pairs["a braid"] == 1
    assert all(p.is_exhaustive for p in index.pairs[0])
    video = index.videos[0]
    assert (video.name, video.height, video.width, video.length) == ("sav_000208", 1280, 720, 146)
    # A visible frame has both a box and a mask; the box is the mask's tight box.
    braid = next(m for m in index.masklets[0] if m.phrase == "a braid")
    visible = [t for t in range(video.length) if braid.is_visible(t)]
    assert len(visible) == sum(s is not None for s in braid.segmentations)
    t = visible[0]
    mask = rle_decode([braid.segmentations[t]])[0]
    ys, xs = mask.nonzero(as_tuple=True)
    x, y, w, h = braid.boxes_xywh[t]
    assert (x, y, x + w, y + h) == (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _square_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ytvis_json() -> dict:
    """Two videos, three categories; polygons, an uncompressed RLE and a null frame."""
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:9, 10:16] = 1
    uncompressed_counts = _uncompressed_counts(mask)
    return {
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}],
        "videos": [
            {"id": 1, "file_names": ["a/0.jpg", "a/1.jpg"], "height": 20, "width": 30, "length": 2},
            {"id": 2, "file_names": ["b/0.jpg"], "height": 20, "width": 30, "length": 1},
        ],
        "annotations": [
            {
                "id": 10,
                "video_id": 1,
                "category_id": 2,
                "segmentations": [[_square_polygon(2, 3, 12, 13)], {"size": [20, 30], "counts": uncompressed_counts}],
                "bboxes": [[2, 3, 10, 10], None],
                "areas": [100, 24],
                "iscrowd": 0,
            },
            {"id": 11, "video_id": 1, "category_id": 2, "segmentations": [None, None], "iscrowd": 0},
            {"id": 12, "video_id": 2, "category_id": 1, "segmentations": [[_square_polygon(0, 0, 30, 20)]]},
        ],
    }


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def test_ytvis_reader(tmp_path):
    index = load_annotations(_write(tmp_path / "ytvis.json", ytvis_json()))
    assert index.format == "ytvis"
    assert [v.video_id for v in index.videos] == [1, 2]
    # Every category is a pair of every video; absent ones are negatives.
    assert [(p.phrase, p.num_masklets) for p in index.pairs[0]] == [("person", 0), ("dog", 2), ("cat", 0)]
    assert [(p.phrase, p.num_masklets) for p in index.pairs[1]] == [("person", 1), ("dog", 0), ("cat", 0)]
    dog = index.masklets[0][0]
    masks = rle_decode([dog.segmentations[0], dog.segmentations[1]])
    assert masks[1].sum() == 24 and masks[1, 5:9, 10:16].all()
    assert dog.boxes_xywh[1] == [10.0, 5.0, 6.0, 4.0]  # derived from the RLE where the box is null
    assert not index.masklets[0][1].is_visible(0)
    assert index.counts()["negative_pairs"] == 4


def test_ytvis_not_exhaustive_option(tmp_path):
    index = load_annotations(_write(tmp_path / "ytvis.json", ytvis_json()), is_exhaustive=False)
    assert not any(p.is_exhaustive for pairs in index.pairs for p in pairs)


def coco_json() -> dict:
    """A Roboflow-style export: category 0 only names the supercategory."""
    return {
        "categories": [
            {"id": 0, "name": "animals", "supercategory": "none"},
            {"id": 1, "name": "cat", "supercategory": "animals"},
            {"id": 2, "name": "dog", "supercategory": "animals"},
        ],
        "images": [
            {"id": 0, "file_name": "img0.jpg", "height": 20, "width": 30},
            {"id": 1, "file_name": "img1.jpg", "height": 20, "width": 30},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 0,
                "category_id": 1,
                "bbox": [2, 3, 10, 10],
                "area": 100,
                "segmentation": [_square_polygon(2, 3, 12, 13)],
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 0,
                "category_id": 1,
                "bbox": [15, 5, 5, 5],
                "area": 25,
                "segmentation": [_square_polygon(15, 5, 20, 10)],
                "iscrowd": 0,
            },
        ],
    }


def test_coco_reader(tmp_path):
    index = load_annotations(_write(tmp_path / "_annotations.coco.json", coco_json()))
    assert index.format == "coco" and index.has_masks
    assert [v.length for v in index.videos] == [1, 1]
    assert index.phrases == ["cat", "dog"]  # the supercategory-only category is not a prompt
    assert [(p.phrase, p.num_masklets) for p in index.pairs[0]] == [("cat", 2), ("dog", 0)]
    assert [(p.phrase, p.num_masklets) for p in index.pairs[1]] == [("cat", 0), ("dog", 0)]
    mask = rle_decode([index.masklets[0][0].segmentations[0]])[0]
    assert mask.shape == (20, 30) and mask[3:13, 2:12].all() and mask.sum() == 100


def test_coco_box_only(tmp_path):
    data = coco_json()
    for ann in data["annotations"]:
        ann["segmentation"] = []
    index = load_annotations(_write(tmp_path / "boxes.json", data))
    assert not index.has_masks
    assert index.masklets[0][1].segmentations is None
    assert index.masklets[0][1].boxes_xywh == [[15.0, 5.0, 5.0, 5.0]]


def test_saco_shapes_roundtrip_reader(shapes_dir):
    index = load_annotations(shapes_dir / "train" / "annotations.json")
    assert index.format == "saco_veval"
    assert len(index) == 6
    for pairs, masklets in zip(index.pairs, index.masklets, strict=True):
        assert any(p.num_masklets == 0 for p in pairs)
        assert sum(p.num_masklets for p in pairs) == len(masklets)
    assert torch.tensor([v.length for v in index.videos]).eq(6).all()
    with pytest.raises(ValueError, match="unknown annotation format"):
        load_annotations(shapes_dir / "train" / "annotations.json", format="lvis")
