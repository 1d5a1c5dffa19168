"""Mixed data: a Roboflow COCO export read as one-frame videos, datasets sampled by weight (the same on
every rank of a frame group, resumable), and negative prompts drawn from other categories."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from sam3.data.collate import collate_clips
from sam3.data.dataset import ClipSamplingConfig, build_video_dataset
from sam3.data.index import DataError
from sam3.data.inspect import main as inspect_main
from sam3.data.mixed import MixedDataset, build_mixed_dataset
from sam3.data.prompts import PromptConfig
from sam3.data.readers import load_annotations
from sam3.data.sampler import FrameGroupSampler
from sam3.ops.masks import rle_decode
from tests.helpers import write_roboflow_export

SIZE = 56


def _coco(roboflow_root, split="train", image_size=SIZE, **kwargs):
    return build_video_dataset(roboflow_root / split / "_annotations.coco.json", image_size=image_size, **kwargs)


def _shapes(shapes_dir, **kwargs):
    clips = ClipSamplingConfig(num_frames=3, stride_range=(1, 2))
    return build_video_dataset(
        shapes_dir / "train" / "annotations.json", image_size=SIZE, clip_sampling=clips, **kwargs
    )


def _mixed(shapes_dir, roboflow_root, weights=(2.0, 1.0), epoch_size=None, **kwargs) -> MixedDataset:
    members = {"shapes": _shapes(shapes_dir, **kwargs), "parts": _coco(roboflow_root, **kwargs)}
    entries = {name: {"dataset": d, "weight": w} for (name, d), w in zip(members.items(), weights, strict=True)}
    return build_mixed_dataset(entries, seed=5, epoch_size=epoch_size)


def test_roboflow_export_reads_masks_and_boxes_without_the_supercategory(roboflow_root):
    written = write_roboflow_export(roboflow_root.parent / "again")  # the same content, its masks returned
    for split in ("train", "valid", "test"):
        index = load_annotations(roboflow_root / split / "_annotations.coco.json")
        assert index.format == "coco" and index.has_masks
        assert index.phrases == ["bolt", "nut"]  # category 0 "hardware" names the supercategory only
        assert [video.length for video in index.videos] == [1, 1, 1]
        assert [[(p.phrase, p.num_masklets) for p in pairs] for pairs in index.pairs] == [
            [("bolt", 1), ("nut", 0)],
            [("bolt", 1), ("nut", 1)],
            [("bolt", 1), ("nut", 0)],
        ]
        for masklets in index.masklets:
            for m in masklets:
                mask = written[m.ann_id]
                assert np.array_equal(rle_decode([m.segmentations[0]])[0].numpy(), mask), (split, m.ann_id)
                ys, xs = np.nonzero(mask)
                assert m.boxes_xywh[0] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    valid = roboflow_root / "valid"
    assert inspect_main([str(valid / "_annotations.coco.json"), "--frames-root", str(valid)]) == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("category_id", 7, "annotation 1: field 'category_id': unknown category id 7"),
        ("segmentation", [[1, 2, 3]], "annotation 1: field 'segmentation': polygons need an even number"),
        ("bbox", [50, 50, 30, 30], "annotation 1: field 'bbox': box .* lies outside the 64x64"),
        ("image_id", "x", "annotation 1: field 'image_id': unknown image id 'x'"),
    ],
)
def test_a_bad_coco_record_names_file_record_and_field(roboflow_root, tmp_path, field, value, message):
    data = json.loads((roboflow_root / "train" / "_annotations.coco.json").read_text())
    data["annotations"][0][field] = value
    path = tmp_path / "_annotations.coco.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{path}: {message}"):
        load_annotations(path)
    assert load_annotations(path, on_error="skip").num_skipped == 1


def test_datasets_are_drawn_in_proportion_to_their_weights(shapes_dir, roboflow_root):
    mixed = _mixed(shapes_dir, roboflow_root, weights=(2.0, 1.0), epoch_size=30)
    assert mixed.slot_counts() == {"shapes": 20, "parts": 10}
    for epoch in range(3):
        sources = [mixed.source((epoch, slot)) for slot in range(len(mixed))]
        assert Counter(name for name, _, _ in sources) == {"shapes": 20, "parts": 10}
        # 20 draws of 6 shapes clips: every clip in rounds 0-2, two in round 3; 10 of 3 images likewise
        for name, num_clips, draws in (("shapes", 6, 20), ("parts", 3, 10)):
            mine = [(clip, round_idx) for n, clip, round_idx in sources if n == name]
            assert len(set(mine)) == draws and {clip for clip, _ in mine} == set(range(num_clips))
            assert Counter(round_idx for _, round_idx in mine) == Counter(k // num_clips for k in range(draws))
    assert mixed.plan(0)[0].tolist() != mixed.plan(1)[0].tolist()  # a new order every epoch
    assert _mixed(shapes_dir, roboflow_root, weights=(1.0, 3.0)).slot_counts() == {"shapes": 2, "parts": 7}
    assert _mixed(shapes_dir, roboflow_root, weights=(1.0, 0.0)).slot_counts() == {"shapes": 9, "parts": 0}


def test_the_ranks_of_a_frame_group_agree_and_a_restart_resumes(shapes_dir, roboflow_root):
    ranks = [_mixed(shapes_dir, roboflow_root, group_size=2, group_rank=r) for r in (0, 1)]
    samplers = [FrameGroupSampler(len(ranks[0]), seed=5) for _ in ranks]
    keys = [list(sampler) for sampler in samplers]
    assert keys[0] == keys[1]
    clips = [[dataset[key] for key in keys[0]] for dataset in ranks]
    for a, b in zip(*clips, strict=True):
        assert a.clip_id == b.clip_id and a.clip_id[0] in ("shapes", "parts")
        assert a.num_frames == b.num_frames and a.prompts == b.prompts
        assert len(a.frame_indices) + len(b.frame_indices) == a.num_frames  # each frame on one rank
        if a.clip_id[0] == "parts":  # an image: its one frame on group rank 0, nothing on rank 1
            assert a.num_frames == 1 and a.frame_indices.tolist() == [0] and len(b.frame_indices) == 0
    batch = collate_clips(clips[1][:4])  # rank 1's batch may lack frames of some clips
    assert batch.num_frames.tolist() == [c.num_frames for c in clips[1][:4]]
    assert [c[0] for c in batch.clip_ids] == [c.clip_id[0] for c in clips[1][:4]]

    # a restarted process (fresh objects) continues the epoch with the same clips
    restarted = _mixed(shapes_dir, roboflow_root, group_size=2, group_rank=0)
    sampler = FrameGroupSampler(len(restarted), seed=5)
    sampler.load_state_dict(samplers[0].state_dict(position=4))
    resumed = [restarted[key] for key in sampler]
    for a, b in zip(resumed, clips[0][4:], strict=True):
        assert a.clip_id == b.clip_id and a.prompts == b.prompts
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)


def test_a_clip_drawn_twice_in_an_epoch_gets_its_own_random_stream(shapes_dir, roboflow_root):
    mixed = _mixed(shapes_dir, roboflow_root, weights=(1.0, 0.0), epoch_size=12)
    by_source = {mixed.source((0, slot)): mixed[(0, slot)] for slot in range(12)}
    repeats = [(by_source[("shapes", c, 0)], by_source[("shapes", c, 1)]) for c in range(6)]
    assert all(first.video_id == again.video_id for first, again in repeats)
    assert any(
        first.file_names != again.file_names or not torch.equal(first.images, again.images) for first, again in repeats
    )


def test_absent_categories_are_negative_prompts_without_targets(shapes_dir, roboflow_root):
    coco = _coco(roboflow_root)
    clip = coco[(0, 0)]  # image 0 has a bolt and no nut
    assert sorted(zip(clip.prompts, clip.is_positive, strict=True)) == [("bolt", True), ("nut", False)]
    nut = clip.prompts.index("nut")
    assert clip.prompt_instances[nut] == []
    targets = collate_clips([clip]).targets
    assert targets.num_instances[nut] == 0 and not targets.is_visible_padded[nut].any()

    # phrases of the other datasets as negatives of every clip (`negatives_from_all_datasets`)
    prompts = PromptConfig(num_sampled_negatives=2)
    members = {"shapes": _shapes(shapes_dir), "parts": _coco(roboflow_root)}
    mixed = build_mixed_dataset(
        {name: {"dataset": d} for name, d in members.items()}, prompts=prompts, negatives_from_all_datasets=True
    )
    shape_phrases = set(members["shapes"].index.phrases)
    for slot in range(len(mixed)):
        clip = mixed[(0, slot)]
        if clip.clip_id[0] == "parts":
            borrowed = [p for p in clip.prompts if p in shape_phrases]
            assert len(borrowed) == 2 and len(clip.prompts) == 4
            for phrase in borrowed:
                k = clip.prompts.index(phrase)
                assert not clip.is_positive[k] and clip.prompt_instances[k] == []


def test_mixed_datasets_that_cannot_batch_together_are_refused(shapes_dir, roboflow_root):
    with pytest.raises(ValueError, match=r"differ in image_size: shapes: 56, parts: 112"):
        build_mixed_dataset(
            {"shapes": {"dataset": _shapes(shapes_dir)}, "parts": {"dataset": _coco(roboflow_root, image_size=112)}}
        )
    with pytest.raises(ValueError, match=r"\['parts'\] have train=false"):
        build_mixed_dataset(
            {"shapes": {"dataset": _shapes(shapes_dir)}, "parts": {"dataset": _coco(roboflow_root, train=False)}}
        )
    with pytest.raises(ValueError, match=r"datasets.parts.weight=-1.0: expected a finite number >= 0"):
        _mixed(shapes_dir, roboflow_root, weights=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"every weight is 0"):
        _mixed(shapes_dir, roboflow_root, weights=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"datasets.shapes: expected the keys 'dataset'.*got \['weight'\]"):
        build_mixed_dataset({"shapes": {"weight": 1.0}})
