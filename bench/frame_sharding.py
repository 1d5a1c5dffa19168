"""Frame sharding benchmark: one clip of T frames of the tiny model, measured side by side in one run.

    python bench/frame_sharding.py [--frames 8] [--image-size 224] [--repeats 3] [--devices auto|cpu|cuda]

Prints, for W = 1 and W = 2 gloo ranks on CPU (1 thread per rank) and on CUDA (`--devices auto`: CPU,
then CUDA when there are two GPUs, one GPU per rank; `--devices cuda`: CUDA only, and with one GPU the
two ranks share it, so W = 2 measures contention, not scaling):
- training step time (forward + backward of the sharded clip) and the speedup of W = 2 over W = 1;
- peak memory per rank (RSS on CPU, allocated memory on CUDA);
- inference frames/s of `VideoGroundingRunner` with async gathers (next chunk computed
  while the current one travels) versus synchronous gathers;
- the per-frame loop baseline: all T frames run one after another on one rank.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from sam3.data.collate import collate_clips
from sam3.distributed.env import get_rank, get_world_size
from sam3.distributed.frame_layout import frames_of_rank
from sam3.distributed.frame_shard import build_frame_group
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.distributed.video_inference import VideoGroundingRunner
from sam3.loss.normalization import LossNormalization
from sam3.tools.check_frame_sharding import (
    CheckConfig,
    build_check_criterion,
    build_check_model,
    local_frames,
    make_clip,
)
from sam3.train.step import forward_backward


def measure_rank(config: CheckConfig, repeats: int, device_type: str) -> dict:
    """Step time, peak memory and inference throughput on this rank (all ranks call it)."""
    device = torch.device(device_type, get_rank() % torch.cuda.device_count() if device_type == "cuda" else 0)
    group = build_frame_group(None)
    clip = make_clip(config, config.seed + 1)
    batch = collate_clips([local_frames(clip, frames_of_rank(config.num_frames, group.group_size, group.group_rank))])
    model = build_check_model(config).to(device)
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if get_world_size() > 1 else model
    criterion = build_check_criterion()
    step_times = []
    for step in range(repeats + 1):  # the first step warms up
        _sync(device)
        start = time.perf_counter()
        forward_backward(ddp, criterion, [batch], step, device)
        _sync(device)
        if step:
            step_times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    model.eval()
    images = clip.images.to(device)
    throughput = {}
    for mode in ("async", "sync"):
        runner = VideoGroundingRunner(model, group, async_gather=mode == "async")
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            for _ in runner.run(lambda t: images[t], config.num_frames, clip.prompts):
                pass
            _sync(device)
            times.append(time.perf_counter() - start)
        throughput[mode] = config.num_frames / statistics.median(times)
    return {"step_s": statistics.median(step_times), "peak_mb": _peak_mb(device), **throughput}


def per_frame_loop(config: CheckConfig, repeats: int, device_type: str) -> float:
    """Baseline: every frame of the clip through the image model one after another, seconds per step."""
    device = torch.device(device_type)
    clip = make_clip(config, config.seed + 1)
    model = build_check_model(config).to(device)
    criterion = build_check_criterion()
    frames = [collate_clips([local_frames(clip, [t])]) for t in range(config.num_frames)]
    normalization = LossNormalization.local([f.targets for f in frames])
    times = []
    for step in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for frame in frames:
            frame = frame.to(device)
            loss, _ = criterion(model(frame), frame.targets, normalization, step=step)
            loss.backward()
        _sync(device)
        if step:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    if args.devices == "cuda" and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available; use --devices cpu or auto")
    device_types = {
        "auto": ["cpu"] + (["cuda"] if torch.cuda.device_count() >= 2 else []),
        "cpu": ["cpu"],
        "cuda": ["cuda"],
    }[args.devices]
    for device_type in device_types:
        torch.set_num_threads(1)
        config = CheckConfig(world_size=1, group_size=1, num_frames=args.frames, image_size=args.image_size)
        loop_s = per_frame_loop(config, args.repeats, device_type)
        results = {}
        for world_size in (1, 2):
            config = CheckConfig(
                world_size=world_size, group_size=world_size, num_frames=args.frames, image_size=args.image_size
            )
            ranks = run_on_local_ranks(measure_rank, world_size, config, args.repeats, device_type, threads_per_rank=1)
            results[world_size] = {
                "step_s": max(r["step_s"] for r in ranks),
                "peak_mb": max(r["peak_mb"] for r in ranks),
                "async": min(r["async"] for r in ranks),
                "sync": min(r["sync"] for r in ranks),
            }
        one, two = results[1], results[2]
        gpus = f", 2 ranks on {torch.cuda.device_count()} GPU(s)" if device_type == "cuda" else ""
        print(
            f"== {device_type}: tiny model, T={args.frames} frames at {args.image_size} px, 1 thread per rank{gpus} =="
        )
        print(f"per-frame loop (1 rank, frames one after another): {loop_s:.3f} s/step")
        for world_size, r in results.items():
            print(
                f"W={world_size}: {r['step_s']:.3f} s/step, peak {r['peak_mb']:.0f} MB/rank, inference "
                f"{r['async']:.1f} frames/s async vs {r['sync']:.1f} sync"
            )
        print(
            f"ratios: W=2 vs W=1 step speedup {one['step_s'] / two['step_s']:.2f}x; W=1 batched vs per-frame loop "
            f"{loop_s / one['step_s']:.2f}x; peak memory W=2/W=1 {two['peak_mb'] / one['peak_mb']:.2f}; "
            f"async/sync inference W=2 {two['async'] / two['sync']:.2f}x"
        )


if __name__ == "__main__":
    main()
