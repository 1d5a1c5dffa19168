"""Check that frame-sharded training equals one process on the whole clip.

    python -m sam3.tools.check_frame_sharding --world-size 2 --frames 5 [--group-size 2]

Spawns W gloo ranks on CPU with the tiny model (dropout and drop-path off) and prints the maximum
relative difference, per tensor ‖a − b‖ / max(‖b‖, 1e-12), of the step loss, every parameter's gradient
and the inference outputs of `VideoGroundingRunner`, against a single process that holds
every frame of every clip. With W / F frame groups, group g trains on clip g; the reference process
holds all of them in one batch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sam3.data.collate import ClipSample, collate_clips
from sam3.distributed.frame_layout import frames_of_rank
from sam3.distributed.frame_shard import FrameGroup, LocalFrameGroup, build_frame_group
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.distributed.video_inference import VideoGroundingRunner
from sam3.model.sam3_video import Sam3ImageOnVideoMultiGPU
from sam3.model_builder import build_model, build_sam3_video_model, config_dir
from sam3.ops.boxes import box_xyxy_to_cxcywh
from sam3.ops.masks import masks_to_boxes_xyxy
from sam3.train.step import forward_backward, wrap_ddp

logger = logging.getLogger("sam3.tools.check_frame_sharding")

NEGLIGIBLE_GRAD = 1e-6
# Everything random in a training forward, switched off so that equality is exact up to float sums:
# overrides of a model config, and the same as overrides of a run config.
DETERMINISTIC_MODEL_OVERRIDES = [
    "backbone.vision_backbone.trunk.drop_path_rate=0.0",
    "encoder.dropout=0.0",
    "decoder.dropout=0.0",
    "dot_prod_scoring.dropout=0.0",
    "geometry_encoder.dropout=0.0",
]
DETERMINISTIC_OVERRIDES = [f"model.{override}" for override in DETERMINISTIC_MODEL_OVERRIDES]


@dataclass(frozen=True)
class CheckConfig:
    """One equivalence check.

    Attributes:
        world_size: W ranks.
        group_size: F ranks per frame group (W / F groups, one clip each).
        num_frames: T frames per clip.
        num_prompts: prompts per clip (the last one negative: no instance).
        image_size: square input size (multiple of 14).
        seed: model and data seed.
    """

    world_size: int = 2
    group_size: int = 2
    num_frames: int = 4
    num_prompts: int = 2
    image_size: int = 112
    seed: int = 0


@dataclass
class CheckResult:
    """Maximum relative differences against the single-process reference.

    Gradients that are zero in exact arithmetic (e.g. the bias of a layer feeding a softmax, which is
    shift-invariant) come out as float noise whose relative error means nothing; tensors whose
    reference gradient norm is below 1e-6 of the whole model's are compared relative to the whole
    model's gradient norm instead (`negligible_grad`).
    """

    loss: float
    max_grad: float
    worst_grad: str
    negligible_grad: float
    num_negligible: int
    inference: float
    num_params_compared: int

    def passed(self, tolerance: float) -> bool:
        return max(self.loss, self.max_grad, self.negligible_grad, self.inference) < tolerance


def build_check_model(config: CheckConfig) -> Sam3ImageOnVideoMultiGPU:
    """The tiny video model with deterministic layers, identically initialised on every rank."""
    overrides = [*DETERMINISTIC_MODEL_OVERRIDES, f"backbone.vision_backbone.trunk.img_size={config.image_size}"]
    torch.manual_seed(config.seed)
    image_model = build_model("tiny", overrides=overrides)
    return build_sam3_video_model(image_model=image_model).train()


def build_check_criterion():
    """The demo criterion with uniform mask points only: importance sampling keeps the top-k most
    uncertain candidates, a discontinuous choice that float noise between batchings can flip."""
    overrides = ["loss.masks.num_points=256", "+loss.masks.importance_sample_ratio=0.0"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("demo_shapes_video", overrides=overrides)
    return instantiate(cfg.loss)


def make_clip(config: CheckConfig, clip_seed: int) -> ClipSample:
    """A random clip: two moving rectangles (one hidden in some frames) as instances of the first
    prompt(s); the remaining prompts are negatives. The second prompt is not exhaustively annotated,
    so the weak-loss counts travel through the all-reduce too."""
    g = torch.Generator().manual_seed(clip_seed)
    size, frames = config.image_size, config.num_frames
    num_instances = 2
    masks = torch.zeros(frames, num_instances, size, size, dtype=torch.bool)
    for n in range(num_instances):
        x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        w, h = torch.randint(size // 8, size // 3, (2,), generator=g).tolist()
        for t in range(frames):
            if n == 1 and t % 3 == 2:
                continue  # invisible in some frames: stays a placeholder
            dx = (t * 3 + n) % (size // 4)
            masks[t, n, y0 : y0 + h, x0 + dx : x0 + dx + w] = True
    boxes = box_xyxy_to_cxcywh(masks_to_boxes_xyxy(masks)) / size
    visible = masks.flatten(2).any(-1)
    if config.num_prompts == 2:
        prompt_instances = [[0, 1], []]
    else:
        prompt_instances = [[0], [1]] + [[] for _ in range(config.num_prompts - 2)]
    return ClipSample(
        images=torch.randn(frames, 3, size, size, generator=g),
        frame_indices=torch.arange(frames),
        num_frames=frames,
        prompts=[f"object {p}" for p in range(config.num_prompts)],
        prompt_instances=prompt_instances,
        is_exhaustive=[p != 1 for p in range(config.num_prompts)],
        is_positive=[bool(inst) for inst in prompt_instances],
        boxes_cxcywh=boxes,
        is_visible=visible,
        masks=masks,
        video_id=clip_seed,
        orig_size=(size, size),
        file_names=[""] * frames,
        clip_id=clip_seed,
    )


def local_frames(clip: ClipSample, frame_ids: list[int]) -> ClipSample:
    """The part of a clip that a rank holding `frame_ids` decodes."""
    idx = torch.tensor(frame_ids, dtype=torch.int64)
    return ClipSample(
        images=clip.images[idx],
        frame_indices=idx,
        num_frames=clip.num_frames,
        prompts=clip.prompts,
        prompt_instances=clip.prompt_instances,
        is_exhaustive=clip.is_exhaustive,
        is_positive=clip.is_positive,
        boxes_cxcywh=clip.boxes_cxcywh[idx],
        is_visible=clip.is_visible[idx],
        masks=None if clip.masks is None else clip.masks[idx],
        video_id=clip.video_id,
        orig_size=clip.orig_size,
        file_names=[clip.file_names[i] for i in frame_ids],
        clip_id=clip.clip_id,
    )


def run_reference(config: CheckConfig) -> dict:
    """Loss, gradients and inference outputs of one process holding every frame of every clip."""
    num_groups = config.world_size // config.group_size
    clips = [make_clip(config, config.seed + 1 + g) for g in range(num_groups)]
    model = build_check_model(config)
    losses = forward_backward(model, build_check_criterion(), [collate_clips(clips)], 0, torch.device("cpu"))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    inference = [_inference(model, LocalFrameGroup(), clip) for clip in clips]
    return {"loss": losses.loss, "grads": grads, "inference": inference}


def run_rank(config: CheckConfig) -> dict:
    """One rank of the sharded run: its group's clip, its own frames, DDP over the world."""
    group = build_frame_group(config.group_size)
    clip = make_clip(config, config.seed + 1 + group.group_idx)
    mine = frames_of_rank(config.num_frames, group.group_size, group.group_rank)
    batch = collate_clips([local_frames(clip, mine)])
    model = build_check_model(config)
    ddp = wrap_ddp(model, torch.device("cpu"))
    losses = forward_backward(ddp, build_check_criterion(), [batch], 0, torch.device("cpu"))
    total = losses.loss.clone()
    dist.all_reduce(total)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    inference = _inference(model, group, clip)
    return {"loss": total / group.world_size, "grads": grads, "inference": inference, "group": group.group_idx}


def compare(reference: dict, ranks: list[dict]) -> CheckResult:
    loss = max(relative_error(r["loss"], reference["loss"]) for r in ranks)
    grads = reference["grads"]
    total_norm = float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads.values()])))
    worst, worst_name, negligible, negligible_names, compared = 0.0, "", 0.0, set(), 0
    for result in ranks:
        if set(result["grads"]) != set(grads):
            missing = sorted(set(grads) ^ set(result["grads"]))
            raise AssertionError(f"parameters with a gradient differ between runs: {missing[:5]}")
        for name, grad in result["grads"].items():
            compared += 1
            if float(grads[name].double().norm()) < NEGLIGIBLE_GRAD * total_norm:
                negligible_names.add(name)
                negligible = max(negligible, float((grad.double() - grads[name].double()).norm()) / total_norm)
                continue
            error = relative_error(grad, grads[name])
            if error >= worst:
                worst, worst_name = error, name
    inference = 0.0
    for result in ranks:
        expected = reference["inference"][result["group"]]
        for frame_idx, tensors in result["inference"].items():
            for key, value in tensors.items():
                inference = max(inference, relative_error(value, expected[frame_idx][key]))
    return CheckResult(loss, worst, worst_name, negligible, len(negligible_names), inference, compared)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / max(‖b‖, 1e-12)."""
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / max(float(torch.linalg.vector_norm(b)), 1e-12))


def check(config: CheckConfig) -> CheckResult:
    """Runs the reference and the sharded run and compares them."""
    torch.set_num_threads(1)
    reference = run_reference(config)
    ranks = run_on_local_ranks(run_rank, config.world_size, config, timeout_s=600)
    return compare(reference, ranks)


def _inference(model: Sam3ImageOnVideoMultiGPU, group: FrameGroup, clip: ClipSample) -> dict:
    frames = VideoGroundingRunner(model, group).run(
        lambda t: clip.images[t], clip.num_frames, clip.prompts, frame_shape=tuple(clip.images.shape[1:])
    )
    return dict(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--group-size", type=int, default=None, help="ranks per frame group (default: all)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = CheckConfig(
        world_size=args.world_size,
        group_size=args.group_size or args.world_size,
        num_frames=args.frames,
        num_prompts=args.prompts,
        image_size=args.image_size,
    )
    result = check(config)
    print(
        f"W={config.world_size} F={config.group_size} T={config.num_frames}: max relative difference "
        f"loss {result.loss:.2e}, gradients {result.max_grad:.2e} (worst {result.worst_grad}; "
        f"{result.num_params_compared} tensors, {result.num_negligible} numerically zero within "
        f"{result.negligible_grad:.1e} of the total norm), inference outputs {result.inference:.2e}; "
        f"{'PASS' if result.passed(args.tolerance) else 'FAIL'} at tolerance {args.tolerance:g}"
    )
    return 0 if result.passed(args.tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
