"""Sam3ImageOnVideoMultiGPU and VideoGroundingRunner in one process: training forward, placeholder frames,
chunked inference."""

import pytest
import torch

from sam3.data.collate import collate_clips
from sam3.distributed.frame_shard import LocalFrameGroup
from sam3.distributed.video_inference import VideoGroundingRunner
from sam3.model.sam3_image import Sam3Image
from sam3.tools.check_frame_sharding import (
    CheckConfig,
    build_check_criterion,
    build_check_model,
    local_frames,
    make_clip,
)
from sam3.train.step import forward_backward

CONFIG = CheckConfig(num_frames=3, image_size=56)


@pytest.fixture(scope="module")
def model():
    return build_check_model(CONFIG)


@pytest.fixture(scope="module")
def clip():
    return make_clip(CONFIG, clip_seed=7)


def test_is_an_image_model_with_the_same_parameters(model):
    assert isinstance(model, Sam3Image)
    image_keys = set(Sam3Image.state_dict(model))
    assert set(model.state_dict()) == image_keys


def test_training_forward_runs_on_the_frames_it_holds(model, clip):
    batch = collate_clips([local_frames(clip, [0, 2])])
    outputs = model.train()(batch)
    assert outputs.pred_logits.shape[0] == batch.num_pairs == 2 * len(clip.prompts)
    assert outputs.o2m is not None


def test_rank_without_frames_runs_a_zero_weight_step(model, clip):
    batch = collate_clips([local_frames(clip, [])])
    assert batch.num_local_frames == 0 and batch.num_pairs == 0
    model.train().zero_grad()
    losses = forward_backward(model, build_check_criterion(), [batch], step=0, device=torch.device("cpu"))
    assert losses.loss.item() == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


def _per_frame_reference(model, clip):
    model.eval()
    reference = {}
    with torch.no_grad():
        for t in range(clip.num_frames):
            out = Sam3Image.forward(model, collate_clips([local_frames(clip, [t])]))
            reference[t] = {"pred_logits": out.pred_logits, "pred_boxes": out.pred_boxes, "pred_masks": out.pred_masks}
    return reference


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("gather_backbone_out", [False, True])
def test_video_inference_equals_the_image_model_frame_by_frame(model, clip, reverse, gather_backbone_out):
    reference = _per_frame_reference(model, clip)
    video = build_check_model(CONFIG).eval()  # same seed, same weights
    runner = VideoGroundingRunner(video, LocalFrameGroup(), gather_backbone_out=gather_backbone_out)
    order = []

    def load(t):
        order.append(t)
        return clip.images[t]

    outputs = dict(runner.run(load, clip.num_frames, clip.prompts, reverse=reverse))
    assert order == sorted(order, reverse=reverse) and sorted(outputs) == list(range(clip.num_frames))
    for t, tensors in outputs.items():
        for key in ("pred_logits", "pred_boxes", "pred_masks"):
            torch.testing.assert_close(tensors[key], reference[t][key], rtol=1e-5, atol=1e-5)


def test_postprocess_hook_runs_before_the_gather(model, clip):
    def keep_scores(frame_idx, tensors):
        return {"scores": tensors["pred_logits"].sigmoid().squeeze(-1), "frame": torch.tensor(frame_idx)}

    runner = VideoGroundingRunner(model.eval(), LocalFrameGroup())
    outputs = dict(runner.run(lambda t: clip.images[t], clip.num_frames, clip.prompts, postprocess=keep_scores))
    assert set(outputs[1]) == {"scores", "frame"} and int(outputs[1]["frame"]) == 1


def test_no_frames_and_no_frame_shape_is_a_clear_error(model, clip):
    class LoneRank:  # group rank 1 of 2 in a one-frame video: owns nothing
        group_size, group_rank = 2, 1

    runner = VideoGroundingRunner(model.eval(), LoneRank())
    with pytest.raises(ValueError, match="frame_shape"):
        next(runner.run(lambda t: clip.images[t], 1, clip.prompts))
