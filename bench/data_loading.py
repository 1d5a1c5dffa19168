"""Data-loading throughput on the synthetic shapes dataset: clips/s with 0 and 2 DataLoader workers.

Generates the default shapes dataset (64 videos, 8 frames, 128 px) in a temporary folder, then reads
training clips (sampling, decoding, prompts, augmentation, collate) through `FrameGroupSampler` and a
`DataLoader`, for each worker count, and prints the rates side by side with their ratio. Each rate is
the median of `--repeats` passes over `--batches` batches, after one warm-up batch (worker start-up
is not counted). `--group-size F` measures one rank of a frame group (it decodes T / F frames).

    python bench/data_loading.py [--image-size 128] [--num-frames 8] [--batch-size 2] [--group-size 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sam3.data.collate import collate_clips
from sam3.data.dataset import ClipSamplingConfig, build_video_dataset
from sam3.data.sampler import FrameGroupSampler
from sam3.data.synthetic import generate_dataset
from sam3.data.transforms import AugmentConfig


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-videos", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128, help="frame size of the generated videos")
    parser.add_argument("--model-size", type=int, default=None, help="model input size (default: image size)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = generate_dataset(Path(tmp), args.num_videos, args.num_frames, args.image_size, seed=0)
        generated = time.perf_counter() - start
        dataset = build_video_dataset(
            paths["train"],
            image_size=args.model_size or args.image_size,
            augment=AugmentConfig(),
            clip_sampling=ClipSamplingConfig(num_frames=args.num_frames, stride_range=(1, 2), reverse_prob=0.5),
            group_size=args.group_size,
        )
        rates = {w: clips_per_second(dataset, w, args.batch_size, args.batches, args.repeats) for w in args.workers}
    print(
        f"shapes dataset: {args.num_videos} videos x {args.num_frames} frames at {args.image_size} px "
        f"(generated in {generated:.1f} s); model input {args.model_size or args.image_size} px, "
        f"batch {args.batch_size}, frame group size {args.group_size}, torch threads 1 per process"
    )
    print(" ".join(f"{f'{w} workers':>12}" for w in rates) + f"{'ratio':>10}")
    ratio = rates[args.workers[-1]] / rates[args.workers[0]]
    print(" ".join(f"{f'{r:.1f} clips/s':>12}" for r in rates.values()) + f"{ratio:>9.2f}x")


if __name__ == "__main__":
    main()
