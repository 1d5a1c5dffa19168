"""Run TRACKER_SESSION_V1 with our memory tracker and save the keys of Meta's reference file
(`sam3_tracker_seeded_outputs.pt`): SEEDED_INIT_V1 weights on the released names, FIXED_FEATURES_V1 in
place of the ViT, the neck's `sam2_convs` pyramid and the tracker at image_size 224; an 8-frame,
3-object session (clicks, a box, a mask, forward propagation, a correction, reverse and forward passes),
then the same session with memory selection under `memsel/`.

    python -m sam3.tools.reference_tracker --seed 0 --out ours_tracker_seed0.pt

The official side is `../shared/tools/official_reference.py tracker --seed N`. Recipe and tolerance rule:
`../shared/reference/README.md`. fp32 (memories bfloat16), CPU, eval mode.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from sam3.model.tracker import Tracker, TrackerFrameFeatures
from sam3.tools.reference_interactive import IMAGE_SIZE, FixedTrunk, build_seeded_heads
from sam3.tracking import VideoTracker

logger = logging.getLogger(__name__)

NUM_FRAMES = 8
VIDEO_HW = (48, 80)
MASK3_HW = (96, 160)
FULL_MEMATTN_CALLS = 1  # memory-attention calls recorded in full (first object)
SESSION = [
    ("s0_add_f0_obj1", "add_new_points_or_box", {"frame_idx": 0, "obj_id": 1, "points": [[0.30, 0.35]], "labels": [1]}),
    (
        "s1_add_f0_obj1",
        "add_new_points_or_box",
        {"frame_idx": 0, "obj_id": 1, "points": [[0.42, 0.30]], "labels": [0], "clear_old_points": False},
    ),
    ("s2_add_f0_obj2", "add_new_points_or_box", {"frame_idx": 0, "obj_id": 2, "box": [0.58, 0.53, 0.82, 0.77]}),
    ("s3_mask_f0_obj3", "add_new_mask", {"frame_idx": 0, "obj_id": 3}),
    (
        "s4_propagate_fwd",
        "propagate_in_video",
        {"start_frame_idx": 0, "max_frame_num_to_track": None, "reverse": False},
    ),
    (
        "s5_add_f5_obj1",
        "add_new_points_or_box",
        {"frame_idx": 5, "obj_id": 1, "points": [[0.55, 0.50]], "labels": [1], "clear_old_points": False},
    ),
    ("s6_propagate_rev", "propagate_in_video", {"start_frame_idx": 5, "max_frame_num_to_track": 5, "reverse": True}),
    ("s7_propagate_fwd", "propagate_in_video", {"start_frame_idx": 5, "max_frame_num_to_track": 2, "reverse": False}),
]


def mask3() -> torch.Tensor:
    """Object 3's mask prompt: (96, 160) float32, ones in rows 8-39 and columns 100-149."""
    mask = torch.zeros(MASK3_HW)
    mask[8:40, 100:150] = 1.0
    return mask


@torch.no_grad()
def seeded_frame_features(seed: int, memory_selection: bool) -> tuple[Tracker, dict[int, TrackerFrameFeatures]]:
    """The seeded tracker and every frame's features (FIXED_FEATURES_V1 through the seeded neck)."""
    neck, tracker = build_seeded_heads(seed)
    tracker.use_memory_selection = memory_selection
    features = {}
    for frame in range(NUM_FRAMES):
        neck.trunk = FixedTrunk(frame=frame)
        _, _, sam2_fpn, sam2_pos = neck.forward_dual(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), num_levels=4)
        features[frame] = tracker.frame_features(sam2_fpn[:3], sam2_pos[:3])
    return tracker, features


@torch.inference_mode()
def run_session(
    tracker: Tracker, features: dict[int, TrackerFrameFeatures], *, compact: bool, prefix: str = ""
) -> dict:
    """TRACKER_SESSION_V1; compact (the memory-selection variant) keeps masks, scores, pointers and scores."""
    tensors: dict[str, torch.Tensor] = {}
    if not compact:
        for frame, feats in features.items():
            tensors[f"features/f{frame}/fpn2_crop"] = feats.pix[0, :8, :4, :4]
            tensors[f"features/f{frame}/fpn0_pool4"] = F.adaptive_avg_pool2d(feats.high_res[0], 4)
        tensors["features/vision_pos_enc2_crop"] = features[0].pos[0, :, :4, :4]

    step_name = {"value": ""}
    memattn_calls = []
    inputs: dict[str, object] = {}

    def capture_inputs(_module, args, kwargs):
        inputs.update(memory=args[2], memory_pos=args[3], n_ptr=kwargs["num_obj_ptr_tokens"])

    condition = tracker.condition_on_memory

    def spy(frame_idx, frame_features, bank, memory_pos, num_frames, reverse):
        out = condition(frame_idx, frame_features, bank, memory_pos, num_frames, reverse)
        i = len(memattn_calls)
        memattn_calls.append({"index": i, "step": step_name["value"], "frame": frame_idx, "reverse": reverse})
        if not compact:
            p = f"{prefix}memattn/{i:02d}/"
            tensors[p + "pix_feat_with_mem_mean"] = out.mean(dim=(2, 3))
            tensors[p + "pix_feat_with_mem_obj0_pool4"] = F.adaptive_avg_pool2d(out[:1], 4)
            if i < FULL_MEMATTN_CALLS:
                tensors[p + "pix_feat_with_mem_obj0"] = out[:1]
                tensors[p + "prompt_obj0"] = inputs["memory"][:1].transpose(0, 1).float()
                tensors[p + "prompt_pos_obj0"] = inputs["memory_pos"][:1].transpose(0, 1)
        return out

    hook = tracker.memory_attention.register_forward_pre_hook(capture_inputs, with_kwargs=True)
    tracker.condition_on_memory = spy
    try:
        video = VideoTracker(tracker)
        state = video.init_state(
            video_height=VIDEO_HW[0], video_width=VIDEO_HW[1], num_frames=NUM_FRAMES, cached_features=features
        )
        last_memory: dict[int, torch.Tensor] = {}
        for step, call, kwargs in SESSION:
            step_name["value"] = step
            p = f"{prefix}{step}/"
            if call == "add_new_points_or_box":
                result = video.add_new_points_or_box(state, **kwargs)
            elif call == "add_new_mask":
                result = video.add_new_mask(state, mask=mask3(), **kwargs)
            if call != "propagate_in_video":
                obj_idx = state.obj_ids.index(kwargs["obj_id"])
                out = state.temp[obj_idx].cond[kwargs["frame_idx"]]
                tensors[p + "obj_ptr"] = out.obj_ptr
                tensors[p + "object_score_logits"] = out.object_score_logits
                if out.pred_masks is not None:
                    tensors[p + "pred_masks"] = out.pred_masks
                if not compact:
                    tensors[p + "video_res_masks"] = result.video_res_masks
                continue
            for frame in video.propagate_in_video(state, **kwargs):
                f = frame.frame_idx
                cond = f in state.bank.cond
                out = state.bank.cond[f] if cond else state.bank.non_cond[f]
                q = f"{p}f{f}/"
                tensors[q + "low_res_masks"] = frame.low_res_masks
                tensors[q + "object_score_logits"] = frame.object_score_logits
                tensors[q + "obj_ptr"] = out.obj_ptr
                memory = out.maskmem_features
                new_memory = f not in last_memory or not torch.equal(last_memory[f], memory)
                if not compact:
                    if step == "s4_propagate_fwd":
                        tensors[q + "video_res_masks"] = frame.video_res_masks
                    if new_memory and (step == "s4_propagate_fwd" or cond):
                        tensors[q + "maskmem_features"] = memory
                last_memory[f] = memory.clone()
                if out.eff_iou_score is not None:
                    tensors[q + "iou_score"] = out.iou_score
                    tensors[q + "eff_iou_score"] = out.eff_iou_score.reshape(1)
        if not compact:
            tensors["maskmem_pos_enc"] = state.memory_pos
    finally:
        hook.remove()
        del tracker.condition_on_memory
    return {
        "tensors": {k: v.detach().clone().contiguous() for k, v in tensors.items()},
        "memattn_calls": memattn_calls,
        "cond_frames_at_end": sorted(state.bank.cond),
    }


def reference_tracker(seed: int) -> dict:
    """Both sessions (plain, then memory selection under `memsel/`); returns {"tensors", "meta"}."""
    tracker, features = seeded_frame_features(seed, memory_selection=False)
    plain = run_session(tracker, features, compact=False)
    tracker.use_memory_selection = True
    memsel = run_session(tracker, features, compact=True, prefix="memsel/")
    meta = {
        "recipe": "TRACKER_SESSION_V1 (ours)",
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "memattn_calls": plain["memattn_calls"],
        "cond_frames_at_end": plain["cond_frames_at_end"],
        "memsel": {"memattn_calls": memsel["memattn_calls"], "cond_frames_at_end": memsel["cond_frames_at_end"]},
    }
    return {"tensors": {**plain["tensors"], **memsel["tensors"]}, "meta": meta}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = reference_tracker(args.seed)
    torch.save(result, args.out)
    logger.info("wrote %d tensors to %s", len(result["tensors"]), args.out)


if __name__ == "__main__":
    main()
