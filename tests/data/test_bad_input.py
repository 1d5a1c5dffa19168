"""Bad input raises a `DataError` naming the file, the record and the field; skipping is logged and counted.
Frames and masks are checked when a clip is loaded: the error names the video and frame too."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import pytest
from torchvision.io import decode_image, write_png

from sam3.data.collate import BadBatch, BadClip, collate_clips
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


def _break_frame(root: Path, case: str) -> Path:
    """Breaks frame 2 of video 0 of the dataset copy at `root`; returns the frame file the error must name."""
    path = root / "video_00000" / "00002.jpg"
    data = path.read_bytes()
    if case == "truncated_jpeg":
        path.write_bytes(data[: len(data) // 2])
    elif case == "jpeg_without_end":
        path.write_bytes(data[:-2])  # only the end-of-image marker is missing
    elif case in ("truncated_png", "png_without_iend"):
        png = path.with_suffix(".png")
        write_png(decode_image(str(path)), str(png))
        png_data = png.read_bytes()
        png.write_bytes(png_data[:-12] if case == "png_without_iend" else png_data[: len(png_data) // 2])
        annotations = root / "annotations.json"
        gt = json.loads(annotations.read_text())
        gt["videos"][0]["file_names"][2] = "video_00000/00002.png"
        annotations.write_text(json.dumps(gt))
        return png
    elif case == "not_an_image":
        path.write_text("not an image")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "missing":
        path.unlink()
    else:
        raise AssertionError(case)
    return path


FRAME_CASES = {
    "truncated_jpeg": "corrupt or truncated",
    "jpeg_without_end": "corrupt or truncated",
    "truncated_png": "truncated PNG",
    "png_without_iend": "truncated PNG",
    "not_an_image": "corrupt or truncated",
    "empty": "unreadable",
    "missing": "is missing",
}


@pytest.mark.parametrize("case", sorted(FRAME_CASES))
def test_bad_frame_file_names_file_video_and_frame(case, shapes_dir, tmp_path):
    root = _dataset_copy(shapes_dir, tmp_path)
    bad = _break_frame(root, case)
    dataset = build_video_dataset(root / "annotations.json", image_size=32, train=False)
    with pytest.raises(DataError) as info:
        dataset[(0, 0)]
    error = info.value
    assert error.path == str(root / "annotations.json")
    assert (error.record, error.field_name) == ("video 0 frame 2", "file_names")
    assert f"frame file {bad} " in str(error) and FRAME_CASES[case] in str(error)
    dataset[(0, 1)]  # the other videos still load


@pytest.mark.parametrize("counts", ["truncated", "short", "invalid_char"])
def test_bad_mask_rle_names_file_video_frame_and_annotation(counts, shapes_dir, shapes_json, tmp_path):
    root = _dataset_copy(shapes_dir, tmp_path)
    data = copy.deepcopy(shapes_json)
    ann = next(a for a in data["annotations"] if a["video_id"] == 0)
    t = _first_visible(ann)
    rle = ann["segmentations"][t]
    rle["counts"] = {"truncated": rle["counts"] + "a", "short": "52", "invalid_char": rle["counts"] + "~"}[counts]
    (root / "annotations.json").write_text(json.dumps(data))
    dataset = build_video_dataset(root / "annotations.json", image_size=32, train=False)  # loads: checked lazily
    with pytest.raises(DataError) as info:
        dataset[(0, 0)]
    error = info.value
    assert error.record == f"video 0 frame {t} annotation {ann['id']}"
    assert error.field_name == f"segmentations[{t}].counts" and "RLE" in str(error)


def test_report_mode_returns_a_bad_clip_and_a_bad_batch(shapes_dir, tmp_path):
    root = _dataset_copy(shapes_dir, tmp_path)
    bad = _break_frame(root, "truncated_jpeg")
    dataset = build_video_dataset(root / "annotations.json", image_size=32, train=False, on_bad_sample="report")
    sample = dataset[(0, 0)]
    assert isinstance(sample, BadClip) and (sample.clip_id, sample.video_id) == ((0, 0), 0)
    assert str(bad) in str(sample.error()) and sample.error().record == "video 0 frame 2"
    batch = collate_clips([dataset[(0, 1)], sample])
    assert isinstance(batch, BadBatch) and batch.num_clips == 2 and batch.bad_clips == [sample]
    assert pickle.loads(pickle.dumps(sample)) == sample  # crosses DataLoader workers and all_gather_object
