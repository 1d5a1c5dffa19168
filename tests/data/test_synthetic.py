"""Synthetic shapes videos: JSON masks equal the rendered shapes, determinism, phrases and negatives."""

from __future__ import annotations

import json

import torch
from torchvision.io import decode_image

from sam3.data.readers import load_annotations
from sam3.data.synthetic import COLORS, generate_split, main, phrase_vocabulary, phrases_of, synthetic_video
from sam3.ops.masks import rle_decode


def test_masks_in_json_equal_rendered_shapes(shapes_dir, shapes_params):
    seed, num_frames, size = shapes_params["seed"], shapes_params["num_frames"], shapes_params["image_size"]
    index = load_annotations(shapes_dir / "train" / "annotations.json")
    for video_idx, (video, masklets) in enumerate(zip(index.videos, index.masklets, strict=True)):
        frames, tracks = synthetic_video(seed, "train", video_idx, num_frames, size)
        shown = [track for track in tracks if track.masks.any()]
        for track in shown:
            for phrase in phrases_of(track.color, track.shape):
                candidates = [m for m in masklets if m.phrase == phrase]
                decoded = [
                    torch.stack([_decode(rle, video.height, video.width) for rle in m.segmentations])
                    for m in candidates
                ]
                assert any(torch.equal(d, track.masks) for d in decoded), (video_idx, phrase)
        # Every masklet is some rendered object, and a phrase has one masklet per matching object.
        for phrase in {m.phrase for m in masklets}:
            matching = [t for t in shown if phrase in phrases_of(t.color, t.shape)]
            assert len([m for m in masklets if m.phrase == phrase]) == len(matching)
        # The JPEG frames show the rendered colours where an object is visible.
        jpeg = decode_image(str(shapes_dir / "train" / video.file_names[0]))
        assert (jpeg.int() - frames[0].int()).abs().float().mean() < 4.0


def _decode(rle, height, width):
    return torch.zeros(height, width, dtype=torch.bool) if rle is None else rle_decode([rle])[0]


def test_objects_move_occlude_and_leave(shapes_dir):
    frames, tracks = synthetic_video(0, "train", 5, 16, 64)
    assert frames.shape == (16, 3, 64, 64) and frames.dtype == torch.uint8
    masks = torch.stack([t.masks for t in tracks])  # (K, T, H, W)
    assert not (masks.sum(0) > 1).any(), "visible parts of objects must not overlap"
    assert not torch.equal(masks[:, 0], masks[:, -1]), "objects must move"
    # Over many videos some objects are invisible in some frames (left the frame or fully occluded).
    hidden = 0
    for idx in range(20):
        _, tracks = synthetic_video(0, "train", idx, 16, 64)
        hidden += sum(bool((~t.masks.flatten(1).any(1)).any()) for t in tracks)
    assert hidden > 0


def test_deterministic_for_a_seed(tmp_path):
    a = generate_split(tmp_path / "a", "val", 3, 4, 48, seed=11)
    b = generate_split(tmp_path / "b", "val", 3, 4, 48, seed=11)
    c = generate_split(tmp_path / "c", "val", 3, 4, 48, seed=12)
    assert a.read_text() == b.read_text() != c.read_text()
    for name in json.loads(a.read_text())["videos"][0]["file_names"]:
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()


def test_vocabulary_and_negatives(shapes_dir):
    data = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == phrase_vocabulary()
    assert len(set(phrase_vocabulary())) == len(COLORS) * 4 + 4 + len(COLORS)
    for video in data["videos"]:
        pairs = [p for p in data["video_np_pairs"] if p["video_id"] == video["id"]]
        assert sum(p["num_masklets"] == 0 for p in pairs) == 3
        assert any(p["num_masklets"] > 0 for p in pairs)


def test_cli_writes_both_splits(tmp_path, capsys):
    main(["--out", str(tmp_path), "--num-videos", "2", "--num-frames", "3", "--image-size", "32", "--seed", "1"])
    assert "train:" in capsys.readouterr().out
    assert len(load_annotations(tmp_path / "train" / "annotations.json")) == 2
    assert len(load_annotations(tmp_path / "val" / "annotations.json")) == 1
