"""The video tracking session (`sam3.tracking.VideoTracker`): inputs, errors, state handling. Parity with
Meta's tracker is `tests/model/test_tracker_parity.py`; these tests use the seeded 224 px tracker on
synthetic features (non-trivial masks) and the tiny model for frames and the backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam3.model_builder import build_model
from sam3.tools.reference_tracker import NUM_FRAMES, VIDEO_HW, mask3, seeded_frame_features
from sam3.tracking import VideoTracker, load_frames


@pytest.fixture(scope="module")
def seeded():
    return seeded_frame_features(seed=0, memory_selection=False)


def new_session(seeded, **tracker_kwargs):
    tracker, features = seeded
    video = VideoTracker(tracker, **tracker_kwargs)
    state = video.init_state(
        video_height=VIDEO_HW[0], video_width=VIDEO_HW[1], num_frames=NUM_FRAMES, cached_features=features
    )
    return video, state


def prompt_three_objects(video, state):
    video.add_new_points_or_box(state, 0, 1, points=[[0.30, 0.35]], labels=[1])
    video.add_new_points_or_box(state, 0, 2, box=[0.58, 0.53, 0.82, 0.77])
    return video.add_new_mask(state, 0, 3, mask3())


def collect(frames):
    return {
        f.frame_idx: (f.low_res_masks.clone(), f.video_res_masks.clone(), f.object_score_logits.clone()) for f in frames
    }


def test_prompt_results_cover_all_objects_at_video_size(seeded):
    video, state = new_session(seeded)
    result = prompt_three_objects(video, state)
    assert result.obj_ids == [1, 2, 3] and result.video_res_masks.shape == (3, 1, *VIDEO_HW)
    assert result.low_res_masks is None
    # The mask prompt is shown thresholded at video size: +-1024 exactly.
    assert set(result.video_res_masks[2].unique().tolist()) <= {-1024.0, 1024.0}


def test_propagation_yields_every_frame_and_stores_bfloat16_memories(seeded):
    video, state = new_session(seeded)
    prompt_three_objects(video, state)
    frames = list(video.propagate_in_video(state))
    assert [f.frame_idx for f in frames] == list(range(NUM_FRAMES))
    assert all(f.low_res_masks.shape == (3, 1, 64, 64) and f.object_score_logits.shape == (3, 1) for f in frames)
    assert all(out.maskmem_features.dtype == torch.bfloat16 for out in state.bank.non_cond.values())
    assert sorted(state.bank.cond) == [0] and sorted(state.bank.non_cond) == list(range(1, NUM_FRAMES))
    reverse = [
        f.frame_idx for f in video.propagate_in_video(state, start_frame_idx=6, max_frame_num_to_track=3, reverse=True)
    ]
    assert reverse == [6, 5, 4, 3]


def test_reset_state_gives_a_fresh_session(seeded):
    video, state = new_session(seeded)
    prompt_three_objects(video, state)
    first = collect(video.propagate_in_video(state))
    video.reset_state(state)
    assert state.obj_ids == [] and not state.bank.cond and not state.frames_tracked
    prompt_three_objects(video, state)
    again = collect(video.propagate_in_video(state))
    assert first.keys() == again.keys()
    for f in first:
        assert all(torch.equal(a, b) for a, b in zip(first[f], again[f], strict=True))


def test_correction_on_a_tracked_frame_makes_it_a_conditioning_frame(seeded):
    video, state = new_session(seeded)
    prompt_three_objects(video, state)
    before = collect(video.propagate_in_video(state))
    video.add_new_points_or_box(state, 5, 1, points=[[0.55, 0.50]], labels=[1], clear_old_points=False)
    after = collect(video.propagate_in_video(state, start_frame_idx=5, max_frame_num_to_track=2))
    assert sorted(state.bank.cond) == [0, 5]
    assert not torch.equal(before[5][0][0], after[5][0][0])  # object 1 corrected on frame 5
    assert torch.equal(before[5][0][1:], after[5][0][1:])  # the others keep their tracked masks


def test_remove_object_keeps_the_others(seeded):
    video, state = new_session(seeded)
    prompt_three_objects(video, state)
    before = collect(video.propagate_in_video(state))
    ids, updated = video.remove_object(state, 2)
    assert ids == [1, 3] and [f for f, _ in updated] == [0] and updated[0][1].shape == (2, 1, *VIDEO_HW)
    assert all(out.obj_ptr.shape[0] == 2 for out in state.bank.non_cond.values())
    # Stored frames are not recomputed: their masks are the kept rows.
    replay = collect(video.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=2))
    for f in replay:
        assert torch.equal(replay[f][0], before[f][0][[0, 2]])
    assert video.remove_object(state, 99) == ([1, 3], [])
    with pytest.raises(KeyError, match="99"):
        video.remove_object(state, 99, strict=True)
    video.remove_object(state, 1)
    video.remove_object(state, 3)
    assert state.obj_ids == [] and not state.bank.cond


def test_bad_inputs_are_named(seeded):
    video, state = new_session(seeded)
    with pytest.raises(ValueError, match="points and labels"):
        video.add_new_points_or_box(state, 0, 1, points=[[0.5, 0.5]])
    with pytest.raises(ValueError, match="clear_old_points"):
        video.add_new_points_or_box(state, 0, 1, box=[0.1, 0.1, 0.4, 0.4], clear_old_points=False)
    with pytest.raises(IndexError, match="frame_idx 8"):
        video.add_new_points_or_box(state, NUM_FRAMES, 1, points=[[0.5, 0.5]], labels=[1])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        video.add_new_mask(state, 0, 1, torch.zeros(1, 4, 4))
    with pytest.raises(RuntimeError, match="no prompts"):
        next(video.propagate_in_video(state))
    video.add_new_points_or_box(state, 0, 1, points=[[0.5, 0.5]], labels=[1])
    list(video.propagate_in_video(state, max_frame_num_to_track=1))
    with pytest.raises(RuntimeError, match="after tracking started"):
        video.add_new_points_or_box(state, 0, 2, points=[[0.5, 0.5]], labels=[1])
    with pytest.raises(ValueError, match="cached_features lack frames"):
        video.init_state(
            video_height=4, video_width=4, num_frames=NUM_FRAMES + 1, cached_features=state.cached_features
        )


def test_frames_from_a_folder_run_the_backbone_once_per_frame(tmp_path):
    model = build_model("tiny").eval()
    rng = np.random.default_rng(0)
    for t in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / f"{t:05d}.png")
    calls = []
    original = model.backbone.forward_image
    model.backbone.forward_image = lambda images, with_sam2=False: (
        calls.append(1) or original(images, with_sam2=with_sam2)
    )
    video = VideoTracker(model.tracker, model.backbone)
    state = video.init_state(tmp_path)
    assert (state.num_frames, state.video_hw) == (3, (30, 40))
    video.add_new_points_or_box(state, 0, 7, points=[[0.5, 0.5]], labels=[1])
    frames = list(video.propagate_in_video(state))
    assert [f.video_res_masks.shape for f in frames] == [(1, 1, 30, 40)] * 3
    assert len(calls) == 3  # one backbone pass per frame (frame 0's features are reused from the click)

    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("*.png"))])
    images, hw = load_frames(torch.from_numpy(pixels).permute(0, 3, 1, 2), 224)  # uint8 tensor
    assert hw == (30, 40) and torch.allclose(images, state.images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_frames(tmp_path / "empty", 224)
