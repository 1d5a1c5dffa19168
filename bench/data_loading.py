"""Data-loading throughput at the real configuration, beside what a training step consumes.

The dataset: synthetic shapes videos (`sam3.data.synthetic`) rendered at `--frame-size` (default
1920x1080: drawn small, scaled up, with sensor-like noise so the JPEGs are as heavy as camera frames)
as JPEG files on disk, with their masks as RLEs at that size. The training pipeline of
`configs/roboflow_video_ft.yaml` reads it: 1008 px model input, 8-frame clips at stride 1..3, the
default augmentation, at most 8 prompts and 64 masklets per clip, `data.clips_per_batch` clips per
batch, through `FrameGroupSampler` and a `DataLoader` with 0, 2 and 4 workers (one torch thread
each). Each rate is the median of `--repeats` passes over `--batches` batches after one warm-up batch
(worker start-up is not counted). `--group-size F` measures one rank of a frame group (T / F frames).

The step's consumption: a rank's loader must deliver `clips_per_batch` clips per training step, so
`clips_per_batch / step_s` clips/s. `--step-s` gives the step time (e.g. a GPU step measured with
the full model); without it the tiny model's CPU step (8 frames at 112 px) is measured here, and the
output says which.

Before the loader, one frame's decoding and resizing paths are timed: torchvision's `decode_jpeg`
(the path of `sam3.data.frames`), PIL's full decode, PIL's DCT-scaled decode (`draft`, 1/2), and
the 1008 px antialiased resize on uint8 and on float32.

    python bench/data_loading.py [--frame-size 1080x1920] [--model-size 1008] [--step-s 1.2] [--workers 0 2 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg, read_file, write_jpeg

from sam3.data.collate import collate_clips
from sam3.data.dataset import ClipSamplingConfig, build_video_dataset
from sam3.data.prompts import PromptConfig
from sam3.data.sampler import FrameGroupSampler
from sam3.data.synthetic import JPEG_QUALITY, generate_dataset
from sam3.data.transforms import AugmentConfig
from sam3.ops.masks import rle_area, rle_decode, rle_encode, rle_to_box_xywh


def scale_up_dataset(annotations: Path, height: int, width: int, noise: float, seed: int) -> None:
    """Rewrites a generated split at `height` x `width`: frames scaled (bilinear) plus Gaussian noise,
    masks scaled (nearest) and re-encoded, boxes and areas recomputed from them."""
    data = json.loads(annotations.read_text())
    root = annotations.parent
    g = torch.Generator().manual_seed(seed)
    for video in data["videos"]:
        for name in video["file_names"]:
            small = decode_jpeg(read_file(str(root / name)), mode=ImageReadMode.RGB)
            frame = TF.resize(small.float(), [height, width], antialias=False)
            frame = frame + noise * torch.randn(frame.shape, generator=g)
            write_jpeg(frame.round().clamp(0, 255).to(torch.uint8), str(root / name), quality=JPEG_QUALITY)
        video["height"], video["width"] = height, width
    for ann in data["annotations"]:
        shown = [i for i, rle in enumerate(ann["segmentations"]) if rle is not None]
        masks = rle_decode([ann["segmentations"][i] for i in shown])  # (K, h, w)
        masks = TF.resize(masks[:, None].to(torch.uint8), [height, width], TF.InterpolationMode.NEAREST)[:, 0] > 0
        rles = rle_encode(masks)
        boxes, areas = rle_to_box_xywh(rles).tolist(), rle_area(rles).tolist()
        for k, i in enumerate(shown):
            ann["segmentations"][i], ann["bboxes"][i], ann["areas"][i] = rles[k], boxes[k], areas[k]
        ann["height"], ann["width"] = height, width
    annotations.write_text(json.dumps(data))


def time_ms(fn, repeats: int) -> float:
    """Median wall milliseconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def decode_paths(path: Path, size: int, repeats: int) -> list[tuple[str, float, str]]:
    """(name, ms per frame, note) of each decoding and resizing path on one frame file."""
    data = read_file(str(path))
    raw = path.read_bytes()
    full = decode_jpeg(data, mode=ImageReadMode.RGB)

    def pil_decode(scale: int) -> torch.Tensor:
        with Image.open(io.BytesIO(raw)) as image:
            if scale > 1:
                image.draft("RGB", (image.width // scale, image.height // scale))
            return torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)

    half = pil_decode(2)
    pil_full = pil_decode(1)
    resized = TF.resize(full, [size, size], antialias=True)
    from_half = TF.resize(half, [size, size], antialias=True)
    half_diff = (from_half.float() - resized.float()).abs().mean().item()
    pil_diff = (pil_full.float() - full.float()).abs().max().item()
    floats = full.float()
    return [
        (
            "torchvision decode_jpeg (frames.py)",
            time_ms(lambda: decode_jpeg(data, mode=ImageReadMode.RGB), repeats),
            "",
        ),
        ("PIL decode", time_ms(lambda: pil_decode(1), repeats), f"max |diff| {pil_diff:.0f} levels vs torchvision"),
        (
            "PIL draft decode 1/2",
            time_ms(lambda: pil_decode(2), repeats),
            f"{half.shape[2]}x{half.shape[1]}: {'below' if min(half.shape[1:]) < size else 'still above'} "
            f"{size} px; after the resize mean |diff| {half_diff:.2f} levels vs full decode",
        ),
        (
            f"resize uint8 -> {size} antialias (transforms.py)",
            time_ms(lambda: TF.resize(full, [size, size]), repeats),
            "",
        ),
        (f"resize float32 -> {size} antialias", time_ms(lambda: TF.resize(floats, [size, size]), repeats), ""),
    ]


def clips_per_second(dataset, workers: int, batch_size: int, batches: int, repeats: int) -> float:
    """Median clips/s over `repeats` passes of `batches` batches, after one warm-up batch per pass."""
    rates = []
    for repeat in range(repeats):
        sampler = FrameGroupSampler(len(dataset), seed=repeat)
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_clips
        )
        if batches >= len(loader):
            raise ValueError(f"--batches {batches} must be below the {len(loader)} batches of an epoch (1 warms up)")
        iterator = iter(loader)
        next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - start))
        del iterator
    return statistics.median(rates)


def tiny_step_seconds(num_frames: int, repeats: int) -> float:
    """Median seconds of one training step (forward + backward) of the tiny model on this CPU."""
    from sam3.tools.check_frame_sharding import CheckConfig, build_check_criterion, build_check_model, make_clip
    from sam3.train.step import forward_backward

    config = CheckConfig(world_size=1, group_size=1, num_frames=num_frames)
    batch = collate_clips([make_clip(config, config.seed + 1)])
    model, criterion = build_check_model(config), build_check_criterion()
    times = []
    for step in range(repeats + 1):  # the first step warms up
        start = time.perf_counter()
        forward_backward(model, criterion, [batch], step, torch.device("cpu"))
        if step:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame-size", default="1080x1920", help="HxW of the JPEG frames on disk")
    parser.add_argument("--model-size", type=int, default=1008, help="model input size (data.image_size)")
    parser.add_argument("--num-videos", type=int, default=4)
    parser.add_argument("--video-frames", type=int, default=16, help="frames per generated video")
    parser.add_argument("--num-frames", type=int, default=8, help="T, frames per clip (data.clip_len)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per batch (data.clips_per_batch)")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--step-s", type=float, default=None, help="training step seconds (default: tiny CPU step)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.frame_size.lower().split("x"))
    torch.set_num_threads(1)
    clips_per_video = -(-(args.batches + 1) * args.batch_size // args.num_videos)  # an epoch covers the passes
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = generate_dataset(Path(tmp), args.num_videos, args.video_frames, 96, seed=0, num_val_videos=1)
        scale_up_dataset(paths["train"], height, width, noise=6.0, seed=0)
        generated = time.perf_counter() - start
        frame_file = next((paths["train"].parent).glob("video_*/*.jpg"))
        frame_kb = os.path.getsize(frame_file) / 1024
        paths_ms = decode_paths(frame_file, args.model_size, repeats=5)
        dataset = build_video_dataset(
            paths["train"],
            image_size=args.model_size,
            augment=AugmentConfig(),
            clip_sampling=ClipSamplingConfig(
                num_frames=args.num_frames, stride_range=(1, 3), clips_per_video=clips_per_video
            ),
            prompts=PromptConfig(max_prompts=8, max_masklets=64),
            group_size=args.group_size,
        )
        rates = {w: clips_per_second(dataset, w, args.batch_size, args.batches, args.repeats) for w in args.workers}
    if args.step_s is None:
        step_s, step_source = tiny_step_seconds(args.num_frames, repeats=2), "tiny model on this CPU, 112 px"
    else:
        step_s, step_source = args.step_s, "given by --step-s"
    needed = args.batch_size / step_s
    print(
        f"{args.num_videos} videos x {args.video_frames} JPEG frames at {height}x{width} (~{frame_kb:.0f} KB each, "
        f"generated in {generated:.0f} s); model input {args.model_size} px, clips of {args.num_frames} frames, "
        f"batch {args.batch_size}, frame group size {args.group_size}; {os.cpu_count()} CPU cores, "
        f"torch threads 1 per process"
    )
    print("one frame, ms (median of 5):")
    for name, ms, note in paths_ms:
        print(f"  {name:<44} {ms:>7.1f}  {note}")
    print(" ".join(f"{f'{w} workers':>13}" for w in rates) + f"{'step needs':>15}")
    print(" ".join(f"{f'{r:.2f} clips/s':>13}" for r in rates.values()) + f"{f'{needed:.2f} clips/s':>15}")
    print(f"step: {step_s:.2f} s ({step_source})")
    if max(args.workers) > (os.cpu_count() or 1):
        print(f"note: {max(args.workers)} workers on {os.cpu_count()} cores oversubscribe the CPU")
    print(
        "ratios: loader / step need "
        + ", ".join(f"{w} workers {r / needed:.2f}x" for w, r in rates.items())
        + f"; {args.workers[-1]} vs {args.workers[0]} workers {rates[args.workers[-1]] / rates[args.workers[0]]:.2f}x"
    )


if __name__ == "__main__":
    main()
