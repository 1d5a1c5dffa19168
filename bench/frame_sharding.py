"""Frame sharding benchmark: one clip of T frames of the tiny model, measured side by side in one run.

    python bench/frame_sharding.py [--frames 8] [--image-size 224] [--repeats 3] [--rounds 5]
                                   [--devices auto|cpu|cuda]

Prints, for W = 1, W = 2 and, where 4 devices are available, W = 4 gloo ranks on CPU (1 thread per rank)
and on CUDA (`--devices auto`: CPU, then CUDA when there are two GPUs, one GPU per rank; `--devices cuda`:
CUDA only, and with one GPU the ranks share it, so W = 2 measures contention, not scaling):
- training step time (forward + backward of the sharded clip, median wall time) and the speedup over
  W = 1; beside it the CPU time per rank (all its threads), which shows the work per rank when other
  processes share the cores, and the ceiling: W ranks running their frames with no communication at all;
- activation memory per rank: bytes of the distinct storages autograd saves in the forward
  (`sam3.tools.memory_plan.saved_activation_bytes`), and peak memory (RSS on CPU, which includes ~0.9 GB
  of interpreter and libraries; allocated memory on CUDA);
- inference frames/s of `VideoGroundingRunner` with async gathers (next chunk computed
  while the current one travels) versus synchronous gathers, and what bounds their ratio: the time of
  one chunk's gather alone (all ranks started together) against one chunk's compute;
- the per-frame loop baseline: all T frames run one after another on one rank.

Step times of W = 1 and W = 2 come from separate processes started one after the other, so a change
in what else runs on the machine moves their ratio (single runs on a quiet 2-core machine spread by
+-0.1x). The speedup is therefore measured in `--rounds` rounds, each timing W = 1, W = 2 and the
no-communication ceiling back to back; the `ratios:` line gives the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import replace
from functools import partial

import torch
import torch.distributed as dist

from sam3.data.collate import collate_clips
from sam3.distributed.env import get_rank, get_world_size
from sam3.distributed.frame_layout import frames_of_rank
from sam3.distributed.frame_shard import build_frame_group
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.distributed.video_inference import INFERENCE_KEYS, VideoGroundingRunner
from sam3.loss.normalization import LossNormalization
from sam3.tools.check_frame_sharding import (
    CheckConfig,
    build_check_criterion,
    build_check_model,
    local_frames,
    make_clip,
)
from sam3.tools.memory_plan import saved_activation_bytes
from sam3.train.step import forward_backward, wrap_ddp


def measure_rank(
    config: CheckConfig, repeats: int, device_type: str, communicate: bool = True, step_only: bool = False
) -> dict:
    """Step time, activation and peak memory and inference throughput on this rank (all ranks call it).

    With `communicate` False, each rank runs its frames' step as a lone process would (no DDP, no
    gathers): the ceiling of what W ranks sharing these cores can reach. With `step_only`, only the
    step's wall and CPU times.
    """
    device = torch.device(device_type, get_rank() % torch.cuda.device_count() if device_type == "cuda" else 0)
    group = build_frame_group(None)
    clip = make_clip(config, config.seed + 1)
    batch = collate_clips([local_frames(clip, frames_of_rank(config.num_frames, group.group_size, group.group_rank))])
    model = build_check_model(config).to(device)
    if model.tracker is not None:  # frozen in training (trainer `frozen_params`): DDP leaves it out
        model.tracker.requires_grad_(False)
    distributed = communicate and get_world_size() > 1
    ddp = wrap_ddp(model, device) if distributed else model
    criterion = build_check_criterion()
    step = _step_fn(ddp, criterion, batch, device) if communicate else _local_step_fn(model, criterion, batch, device)
    step_times, cpu_times = _timed(step, repeats, device, after=lambda: model.zero_grad(set_to_none=True))
    result = {"step_s": statistics.median(step_times), "cpu_s": statistics.median(cpu_times)}
    if step_only or not communicate:
        return result
    activation_bytes, _ = saved_activation_bytes(model, batch.to(device), fused_attention=device.type == "cuda")
    model.zero_grad(set_to_none=True)
    model.eval()
    images = clip.images.to(device)
    for mode in ("async", "sync"):
        runner = VideoGroundingRunner(model, group, async_gather=mode == "async")
        times, _ = _timed(partial(_run_video, runner, images, config.num_frames, clip.prompts), repeats, device)
        result[mode] = config.num_frames / statistics.median(times)
    result.update(_gather_vs_compute(model, group, images, clip.prompts, repeats, device))
    return {**result, "activation_mb": activation_bytes / 2**20, "peak_mb": _peak_mb(device)}


def _run_video(runner: VideoGroundingRunner, images: torch.Tensor, num_frames: int, prompts: list[str]) -> None:
    for _ in runner.run(lambda t: images[t], num_frames, prompts):
        pass


def _step_fn(model, criterion, batch, device):
    counter = iter(range(1_000_000))
    return lambda: forward_backward(model, criterion, [batch], next(counter), device)


def _local_step_fn(model, criterion, batch, device):
    """This rank's frames as a lone process: counts and loss over its own pairs only, no collective."""
    normalization = LossNormalization.local([batch.targets])
    local = batch.to(device)
    counter = iter(range(1_000_000))

    def step() -> None:
        loss, _ = criterion(model(local), local.targets, normalization, step=next(counter))
        loss.backward()

    return step


def _timed(fn, repeats: int, device: torch.device, after=lambda: None) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process, all threads) seconds of `fn`, `repeats` times after one warm-up."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        if i:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        after()
    return walls, cpus


@torch.no_grad()
def _gather_vs_compute(model, group, images: torch.Tensor, prompts: list[str], repeats: int, device) -> dict:
    """Milliseconds of one inference chunk's all-gather alone (every rank starts it together, after a
    barrier) and of one chunk's compute (this rank's frame: backbone and grounding)."""
    text = model.backbone.forward_text(prompts)
    slots = torch.zeros(len(prompts), dtype=torch.int64, device=device)
    text_idx = torch.arange(len(prompts), device=device)

    def compute() -> dict[str, torch.Tensor]:
        output = model.forward_grounding(model.backbone.forward_image(images[:1]), text, slots, text_idx)
        return {key: getattr(output, key) for key in INFERENCE_KEYS if getattr(output, key) is not None}

    tensors = compute()
    compute_s, _ = _timed(compute, repeats, device)
    buffer = group.new_buffer()
    keys = list(range(group.group_size))

    gather_s = []
    for i in range(repeats + 1):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        group.gather_into(buffer, keys, tensors, wait=True)
        _sync(device)
        if i:
            gather_s.append(time.perf_counter() - start)
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    return {
        "gather_ms": 1000 * statistics.median(gather_s),
        "compute_ms": 1000 * statistics.median(compute_s),
        "payload_kb": payload / 1024,
    }


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
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of back-to-back W=1, W=2 and ceiling step timings (>= 1)"
    )
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
        world_sizes = [1, 2] + ([4] if _num_devices(device_type) >= 4 else [])
        config = CheckConfig(world_size=1, group_size=1, num_frames=args.frames, image_size=args.image_size)
        loop_s = per_frame_loop(config, args.repeats, device_type)
        results, ceilings = {}, {}
        for world_size in world_sizes:
            config = CheckConfig(
                world_size=world_size, group_size=world_size, num_frames=args.frames, image_size=args.image_size
            )
            ranks = run_on_local_ranks(measure_rank, world_size, config, args.repeats, device_type, threads_per_rank=1)
            results[world_size] = {key: max(r[key] for r in ranks) for key in ranks[0]}
            results[world_size]["async"] = min(r["async"] for r in ranks)
            results[world_size]["sync"] = min(r["sync"] for r in ranks)
            if world_size > 1:
                alone = run_on_local_ranks(
                    measure_rank, world_size, config, args.repeats, device_type, False, threads_per_rank=1
                )
                ceilings[world_size] = {key: max(r[key] for r in alone) for key in ("step_s", "cpu_s")}
        one, two = results[1], results[2]
        rounds = [(one["step_s"], two["step_s"], ceilings[2]["step_s"])]
        for _ in range(args.rounds - 1):
            rounds.append(
                tuple(
                    _step_s(config, world_size, args.repeats, device_type, communicate)
                    for world_size, communicate in ((1, True), (2, True), (2, False))
                )
            )
        speedup = statistics.median(w1 / w2 for w1, w2, _ in rounds)
        gpus = f", 2 ranks on {torch.cuda.device_count()} GPU(s)" if device_type == "cuda" else ""
        print(
            f"== {device_type}: tiny model, T={args.frames} frames at {args.image_size} px, 1 thread per rank{gpus} =="
        )
        print(f"per-frame loop (1 rank, frames one after another): {loop_s:.3f} s/step")
        for world_size, r in results.items():
            ceiling = ""
            if world_size in ceilings:
                alone = ceilings[world_size]
                ceiling = f" (ceiling, no communication: {alone['step_s']:.3f} s/step, CPU {alone['cpu_s']:.3f})"
            print(
                f"W={world_size}: {r['step_s']:.3f} s/step{ceiling}, CPU {r['cpu_s']:.3f} s/step/rank, activations "
                f"{r['activation_mb']:.1f} MB/rank, peak {r['peak_mb']:.0f} MB/rank, inference {r['async']:.1f} "
                f"frames/s async vs {r['sync']:.1f} sync (one chunk: gather alone {r['gather_ms']:.1f} ms of "
                f"{r['payload_kb']:.0f} KB/rank, compute {r['compute_ms']:.1f} ms)"
            )
        for world_size in world_sizes[1:]:
            r = results[world_size]
            print(
                f"W={world_size} vs W=1: step speedup {one['step_s'] / r['step_s']:.2f}x (ceiling "
                f"{one['step_s'] / ceilings[world_size]['step_s']:.2f}x), CPU per rank {one['cpu_s'] / r['cpu_s']:.2f}x; "
                f"async/sync bound (compute + gather) / compute {1 + r['gather_ms'] / r['compute_ms']:.2f}x"
            )
        print(
            f"W=2 vs W=1 step speedup in {len(rounds)} round(s) of W=1, W=2 and ceiling back to back: "
            + ", ".join(f"{w1 / w2:.2f}x (ceiling {w1 / alone:.2f}x)" for w1, w2, alone in rounds)
            + f"; median {speedup:.2f}x"
        )
        print(
            f"ratios: W=2 vs W=1 step speedup {speedup:.2f}x; W=1 batched vs per-frame loop "
            f"{loop_s / one['step_s']:.2f}x; peak memory W=2/W=1 {two['peak_mb'] / one['peak_mb']:.2f}; "
            f"async/sync inference W=2 {two['async'] / two['sync']:.2f}x; activation memory W=2/W=1 "
            f"{two['activation_mb'] / one['activation_mb']:.2f}"
        )


def _step_s(config: CheckConfig, world_size: int, repeats: int, device_type: str, communicate: bool) -> float:
    """Median step seconds of the slowest of `world_size` ranks."""
    config = replace(config, world_size=world_size, group_size=world_size)
    ranks = run_on_local_ranks(
        measure_rank, world_size, config, repeats, device_type, communicate, True, threads_per_rank=1
    )
    return max(r["step_s"] for r in ranks)


def _num_devices(device_type: str) -> int:
    """Cores this process may run on, or GPUs."""
    if device_type == "cuda":
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
