"""Track mode (`sam3.eval.track_mode`) on generated shapes videos with the tiny model (random weights, so
the plumbing is tested, not the quality): detections become tracker objects, the ViT runs once per frame,
masklets are written in the SA-Co/VEval format and scored, and the config section is validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sam3.data.synthetic import generate_dataset
from sam3.distributed.frame_shard import build_frame_group
from sam3.eval.evaluate import EvalConfig, TopDetections, evaluate
from sam3.eval.postprocess import FramePredictions
from sam3.eval.track_mode import TrackConfig, encode_video, masklet_records, track_phrase
from sam3.model_builder import build_model, config_dir
from sam3.ops.masks import rle_encode
from sam3.tracking import TrackedFrame, VideoTracker
from sam3.train.entry import EvalSection

IMAGE_SIZE = 56
NUM_FRAMES = 4


def F32(value: float) -> float:  # noqa: N802
    """`value` as a float32 score comes back from a tensor."""
    return float(torch.tensor(value))


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes_track")
    generate_dataset(
        root, num_videos=1, num_frames=NUM_FRAMES, image_size=64, seed=1, num_val_videos=2, num_negatives=0
    )
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    overrides = [f"backbone.vision_backbone.trunk.img_size={IMAGE_SIZE}"]
    return build_model("tiny", video=True, overrides=overrides).eval()


@pytest.fixture(scope="module")
def encoded_video(model, dataset_root):
    """The first validation video through `encode_video` (detections on frames 0 and 2), with the
    trunk's calls counted."""
    sample = _dataset(dataset_root)[(0, 0)]
    calls = []
    hook = model.backbone.vision_backbone.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    selection = EvalConfig(min_score=0.0)
    encoded = encode_video(
        model,
        lambda t: sample.images[t],
        sample.num_frames,
        sample.prompts,
        (64, 64),
        select=TopDetections(selection),
        selection=selection,
        config=TrackConfig(detect_every=2),
    )
    hook.remove()
    return sample, encoded, calls


def _dataset(dataset_root: Path):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "demo_shapes_video", overrides=[f"paths.dataset_root={dataset_root}", f"data.image_size={IMAGE_SIZE}"]
        )
    return instantiate(cfg.data.val, group_size=1, group_rank=0, _convert_="all")


def test_vit_runs_once_per_frame_and_detection_frames_follow_detect_every(encoded_video):
    sample, encoded, calls = encoded_video
    assert calls == [1] * NUM_FRAMES, "one single-frame trunk pass per frame"
    assert sorted(encoded.features) == list(range(NUM_FRAMES))
    assert sorted(encoded.predictions) == [0, 2]
    assert all(len(per_prompt) == len(sample.prompts) for per_prompt in encoded.predictions.values())


def _square(top: int, left: int, side: int = 12, size: int = 64) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _predictions(masks: list[torch.Tensor], scores: list[float]) -> FramePredictions:
    stacked = torch.stack(masks)
    return FramePredictions(
        scores=torch.tensor(scores),
        boxes_xywh=torch.zeros(len(masks), 4),
        masks=stacked,
        rles=rle_encode(stacked),
        areas=stacked.flatten(1).sum(1),
        query_idx=torch.arange(len(masks)),
    )


def test_frame0_detections_become_tracker_objects(model, encoded_video):
    _, encoded, _ = encoded_video
    frame0 = _predictions([_square(4, 4), _square(40, 40)], [0.9, 0.6])
    tracker = VideoTracker(model.tracker)
    masklets = track_phrase(tracker, encoded.features, {0: frame0}, NUM_FRAMES, (64, 64), TrackConfig())
    assert [m.first_frame for m in masklets] == [0, 0]
    assert [m.score for m in masklets] == pytest.approx([0.9, 0.6])
    assert all(len(m.rles) == NUM_FRAMES and m.rles[0] is not None for m in masklets), "frame 0 shows the prompt"


class _StaticTracker:
    """A stand-in for `VideoTracker` whose objects stay where they were added: the association rule
    is then checked against known tracked masks."""

    def init_state(self, *, cached_features, video_height, video_width, num_frames):
        return {"masks": [], "num_frames": num_frames}

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        state["masks"].append(mask)

    def propagate_in_video(self, state, start_frame_idx):
        logits = torch.stack(state["masks"])[:, None].float() * 20 - 10  # B, 1, H, W
        for t in range(start_frame_idx, state["num_frames"]):
            yield TrackedFrame(t, list(range(len(state["masks"]))), None, logits, None)


def test_later_detections_start_objects_only_where_nothing_is_tracked():
    frame0 = _predictions([_square(4, 4), _square(40, 40)], [0.9, 0.6])
    # frame 2: one detection on a tracked object (IoU 1), one shifted by a third (IoU 0.5), one new
    frame2 = _predictions([_square(4, 4), _square(40, 44), _square(20, 20)], [0.8, 0.7, 0.5])
    config = TrackConfig(detect_every=2, new_object_iou_thresh=0.3)
    masklets = track_phrase(_StaticTracker(), {}, {0: frame0, 2: frame2}, NUM_FRAMES, (64, 64), config)
    assert [(m.first_frame, m.score) for m in masklets] == [(0, F32(0.9)), (0, F32(0.6)), (2, 0.5)]
    assert masklets[2].rles[:2] == [None, None], "nothing before the object's first frame"
    assert all(r is not None for r in masklets[2].rles[2:])
    empty = _predictions([_square(4, 4), _square(0, 0, side=0)], [0.9, 0.8])
    masklets_empty = track_phrase(_StaticTracker(), {}, {0: empty}, NUM_FRAMES, (64, 64), TrackConfig())
    assert [m.score for m in masklets_empty] == [F32(0.9)], "an empty detection starts no object"
    loose = TrackConfig(detect_every=2, new_object_iou_thresh=0.6)
    masklets = track_phrase(_StaticTracker(), {}, {0: frame0, 2: frame2}, NUM_FRAMES, (64, 64), loose)
    assert [(m.first_frame, m.score) for m in masklets] == [(0, F32(0.9)), (0, F32(0.6)), (2, F32(0.7)), (2, 0.5)]

    records = masklet_records(7, 3, masklets)
    assert len(records) == 4
    record = records[0]
    assert record["video_id"] == 7 and record["category_id"] == 3 and record["score"] == pytest.approx(0.9)
    assert len(record["bboxes"]) == len(record["segmentations"]) == len(record["areas"]) == NUM_FRAMES
    assert record["bboxes"][0] == [4.0, 4.0, 12.0, 12.0] and record["areas"][0] == 144
    assert records[2]["bboxes"][:2] == [None, None] and records[2]["areas"][:2] == [None, None]


def test_evaluate_in_track_mode_writes_and_scores_predictions(model, dataset_root, tmp_path):
    dataset = _dataset(dataset_root)
    calls = []
    hook = model.backbone.vision_backbone.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    metrics = evaluate(
        model,
        dataset,
        build_frame_group(None),
        out_path=tmp_path / "pred.json",
        config=EvalConfig(max_detections=2, min_score=0.0),
        max_videos=1,
        mode="track",
        track=TrackConfig(detect_every=2),
    )
    hook.remove()
    assert calls == [1] * NUM_FRAMES, "one trunk pass per frame"
    assert {"video_mask_mAP_50_95", "video_mask_all_phrase_HOTA"} <= set(metrics)
    records = json.loads((tmp_path / "pred.json").read_text())
    assert records and {"video_id", "category_id", "bboxes", "segmentations", "score", "areas"} <= set(records[0])
    assert all(len(r["segmentations"]) == NUM_FRAMES for r in records)


def test_track_mode_needs_a_tracker_and_one_rank_per_video(dataset_root, tmp_path):
    dataset = _dataset(dataset_root)
    no_tracker = build_model(
        "tiny",
        video=True,
        overrides=[f"backbone.vision_backbone.trunk.img_size={IMAGE_SIZE}", "tracker=null"],
    )
    with pytest.raises(ValueError, match="needs a model with a tracker"):
        evaluate(no_tracker, dataset, build_frame_group(None), out_path=tmp_path / "p.json", mode="track")

    class TwoRanks:
        group_size = 2

    with pytest.raises(ValueError, match="frame_group_size=1"):
        evaluate(no_tracker, dataset, TwoRanks(), out_path=tmp_path / "p.json", mode="track")


def test_eval_section_validates_mode_and_track_keys():
    section = EvalSection(mode="track", track={"detect_every": 5})
    assert section.track == TrackConfig(detect_every=5)
    assert EvalSection().mode == "link" and EvalSection().track == TrackConfig()
    with pytest.raises(ValueError, match="eval.mode='tracking'"):
        EvalSection(mode="tracking")
    with pytest.raises(ValueError, match=r"eval.track: unknown key\(s\) \['every'\]"):
        EvalSection(track={"every": 5})
    with pytest.raises(ValueError, match="detect_every=0"):
        TrackConfig(detect_every=0)
    with pytest.raises(ValueError, match="new_object_iou_thresh"):
        TrackConfig(new_object_iou_thresh=1.5)
