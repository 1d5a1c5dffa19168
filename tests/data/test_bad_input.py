"""Bad input raises a `DataError` naming the file, the record and the field; skipping is logged and counted."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from sam3.data.dataset import build_video_dataset
from sam3.data.index import DataError
from sam3.data.inspect import main as inspect_main
from sam3.data.readers import load_annotations


@pytest.fixture(scope="module")
def shapes_json(shapes_dir) -> dict:
    return json.loads((shapes_dir / "train" / "annotations.json").read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _first_visible(ann: dict) -> int:
    return next(t for t, s in enumerate(ann["segmentations"]) if s is not None)


def _corrupt(case: str, data: dict) -> tuple[str, str]:
    """Breaks `data` in place; returns the record and field the error must name."""
    ann = data["annotations"][0]
    t = _first_visible(ann)
    if case == "rle_size":
        ann["segmentations"][t]["size"] = [32, 64]
        return f"annotation {ann['id']}", f"segmentations[{t}].size"
    if case == "bbox_outside":
        ann["bboxes"][t] = [50.0, 10.0, 20.0, 5.0]  # x + w = 70 > 64
        return f"annotation {ann['id']}", f"bboxes[{t}]"
    if case == "segmentations_length":
        ann["segmentations"].append(None)
        return f"annotation {ann['id']}", "segmentations"
    if case == "bboxes_length":
        ann["bboxes"] = ann["bboxes"][:-1]
        return f"annotation {ann['id']}", "bboxes"
    if case == "unknown_category_annotation":
        ann["category_id"] = 999
        return f"annotation {ann['id']}", "category_id"
    if case == "unknown_category_pair":
        pair = data["video_np_pairs"][0]
        pair["category_id"] = 999
        return f"video_np_pair {pair['id']}", "category_id"
    if case == "unknown_video":
        ann["video_id"] = 77
        return f"annotation {ann['id']}", "video_id"
    if case == "video_length":
        video = data["videos"][1]
        video["length"] = 5
        return f"video {video['id']}", "length"
    if case == "num_masklets":
        pair = next(p for p in data["video_np_pairs"] if p["num_masklets"] > 0)
        pair["num_masklets"] += 1
        return f"video_np_pair {pair['id']}", "num_masklets"
    if case == "missing_field":
        del data["videos"][2]["height"]
        return f"video {data['videos'][2]['id']}", "height"
    raise AssertionError(case)


RECORD_CASES = [
    "rle_size",
    "bbox_outside",
    "segmentations_length",
    "bboxes_length",
    "unknown_category_annotation",
    "unknown_category_pair",
    "unknown_video",
    "video_length",
    "num_masklets",
    "missing_field",
]


@pytest.mark.parametrize("case", RECORD_CASES)
def test_bad_record_raises_naming_file_record_field(case, shapes_json, tmp_path):
    data = copy.deepcopy(shapes_json)
    record, field = _corrupt(case, data)
    path = _write(tmp_path, data)
    with pytest.raises(DataError) as info:
        load_annotations(path)
    error = info.value
    assert (error.path, error.record, error.field_name) == (str(path), record, field)
    assert str(path) in str(error) and record in str(error) and f"'{field}'" in str(error)


@pytest.mark.parametrize("case", ["rle_size", "bbox_outside", "unknown_category_annotation", "video_length"])
def test_skip_bad_records_logs_and_counts(case, shapes_json, tmp_path, caplog):
    data = copy.deepcopy(shapes_json)
    _corrupt(case, data)
    index = load_annotations(_write(tmp_path, data), on_error="skip")
    assert index.num_skipped >= 1
    assert "skipping bad record" in caplog.text
    clean = load_annotations(_write(tmp_path, shapes_json))
    if case == "video_length":
        assert len(index) == len(clean) - 1
    else:
        assert index.counts()["masklets"] == clean.counts()["masklets"] - 1
        # The pair that lost a masklet is kept but no longer exhaustive, or dropped if it lost its only one.
        dropped = sum(map(len, clean.pairs)) - sum(map(len, index.pairs))
        assert dropped + sum(not p.is_exhaustive for pairs in index.pairs for p in pairs) == 1


@pytest.mark.parametrize("text", ['{"videos": [', '{"videos": [}', "", "[1, 2]"])
def test_malformed_or_truncated_json(text, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match="broken.json") as info:
        load_annotations(path)
    assert "JSON" in str(info.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        load_annotations(tmp_path / "nope.json")


def _dataset_copy(shapes_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "train"
    shutil.copytree(shapes_dir / "train", root)
    return root


def test_missing_frame_file(shapes_dir, tmp_path):
    root = _dataset_copy(shapes_dir, tmp_path)
    (root / "video_00000" / "00002.jpg").unlink()
    dataset = build_video_dataset(root / "annotations.json", image_size=32, train=False)
    with pytest.raises(DataError) as info:
        dataset[(0, 0)]
    assert info.value.record == "video 0 frame 2" and info.value.field_name == "file_names"
    assert "00002.jpg is missing" in str(info.value)
    assert inspect_main([str(root / "annotations.json"), "--frames-root", str(root)]) == 1


def test_frame_size_differs_from_json(shapes_dir, tmp_path):
    root = _dataset_copy(shapes_dir, tmp_path)
    data = json.loads((root / "annotations.json").read_text())
    data["videos"][1]["width"] = 80  # frames are 64 px wide; boxes still lie inside 80 px
    for ann in data["annotations"]:
        if ann["video_id"] == 1:
            ann["segmentations"] = [None] * len(ann["segmentations"])
            ann["bboxes"] = [None] * len(ann["bboxes"])
    (root / "annotations.json").write_text(json.dumps(data))
    dataset = build_video_dataset(root / "annotations.json", image_size=32, train=False)
    with pytest.raises(DataError) as info:
        dataset[(0, 1)]
    assert info.value.record == "video 1 frame 0" and info.value.field_name == "height/width"
    assert "64x64 (HxW) but the annotations say 64x80" in str(info.value)
    assert inspect_main([str(root / "annotations.json"), "--frames-root", str(root)]) == 1


def test_inspect_counts_and_exit_codes(shapes_dir, shapes_json, tmp_path, capsys):
    path = shapes_dir / "train" / "annotations.json"
    assert inspect_main([str(path), "--frames-root", str(shapes_dir / "train")]) == 0
    out = capsys.readouterr().out
    masklets = len(shapes_json["annotations"])
    negatives = sum(p["num_masklets"] == 0 for p in shapes_json["video_np_pairs"])
    assert f"masklets        {masklets}\n" in out and f"negative_pairs  {negatives}\n" in out
    assert "frame files ok  36" in out
    data = copy.deepcopy(shapes_json)
    _corrupt("rle_size", data)
    bad = _write(tmp_path, data)
    assert inspect_main([str(bad)]) == 1
    assert "segmentations" in capsys.readouterr().err
    assert inspect_main([str(bad), "--skip-bad-records"]) == 0
    out = capsys.readouterr().out
    assert "skipped_records" in out and "skipped_records 0" not in out
