"""Memory-tracker propagation speed: frames/s of our `VideoTracker` beside Meta's `sam3==0.1.4` tracker,
same seeded weights (SEEDED_INIT_V1) and synthetic features (FIXED_FEATURES_V1 through the neck, no ViT),
measured side by side in one run.

    python bench/tracker.py [--sizes 224 1008] [--objects 1 4 16] [--frames 224:4 1008:1] [--repeats 224:3 1008:1]
                            [--device cpu|cuda] [--bf16] [--threads 2] [--oracle-python PATH] [--no-meta]

For each (image size, objects): one positive click per object on frame 0 (spread over a grid), then
`propagate_in_video` from frame 0. Frame 0 (the prompted frame, its memory encoded in the preflight) and
frame 1 (warm-up) are not timed; the next N frames are. Before the first cell of a size, each side runs an
untimed 1-object, 2-frame session. Ours and Meta's alternate cell by cell (Meta's in a worker process of the
oracle interpreter, `bench/_meta_tracker.py`, idle while ours runs and vice versa); with R repeats a cell is
measured R times per side, order alternating, and the median is kept. The defaults (1 timed frame at 1008 px)
keep a default run near ten minutes on 2 loaded CPU cores: 16 objects at 1008 px cost tens of seconds a frame.
Prints frames/s and the ratio ours/Meta. Features are computed before timing on both sides.

Meta's side needs the oracle interpreter (`--oracle-python`, default env SAM3_ORACLE_PYTHON, else
/tmp/refvenv/bin/python) and `official_reference.py` of the shared tools (`--shared-tools`, default env
SAM3_SHARED_TOOLS, else `shared/tools` in or beside the checkout); without them it is skipped, saying why.
On CUDA Meta's tracker runs under the bfloat16 autocast its constructor enters; `--bf16` gives ours the same.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import statistics
import time
from pathlib import Path

import torch

from bench._oracle_worker import OracleWorker, start_worker
from sam3.model.tracker import Tracker, TrackerFrameFeatures
from sam3.tools.reference_interactive import FixedTrunk, build_seeded_heads
from sam3.tracking import VideoTracker

logger = logging.getLogger(__name__)

VIDEO_HW = (360, 640)
DEFAULT_FRAMES = {224: 4, 1008: 1}
DEFAULT_REPEATS = {224: 3, 1008: 1}


def clicks(num_objects: int) -> list[list[float]]:
    """One relative (x, y) click per object: cell centres of the smallest square grid that holds them,
    row by row."""
    side = math.ceil(math.sqrt(num_objects))
    return [[(i % side + 0.5) / side, (i // side + 0.5) / side] for i in range(num_objects)]


class OurTrackerBench:
    """Seeded trackers and their per-frame features, built once per image size."""

    def __init__(self, device: torch.device, seed: int, bf16: bool) -> None:
        self.device = device
        self.seed = seed
        self.bf16 = bf16
        self.trackers: dict[int, tuple[Tracker, object, dict[int, TrackerFrameFeatures]]] = {}

    @torch.inference_mode()
    def features(self, image_size: int, num_frames: int) -> tuple[Tracker, dict[int, TrackerFrameFeatures]]:
        if image_size not in self.trackers:
            neck, tracker = build_seeded_heads(self.seed, image_size)
            self.trackers[image_size] = (tracker.to(self.device), neck.to(self.device), {})
        tracker, neck, cached = self.trackers[image_size]
        images = torch.zeros(1, 3, image_size, image_size, device=self.device)
        for frame in range(num_frames):
            if frame not in cached:
                neck.trunk = FixedTrunk(frame=frame, image_size=image_size).to(self.device)
                _, _, sam2_fpn, sam2_pos = neck.forward_dual(images, num_levels=4)
                cached[frame] = tracker.frame_features(sam2_fpn[:3], sam2_pos[:3])
        return tracker, {f: cached[f] for f in range(num_frames)}

    def run(self, request: dict, timed: bool = True) -> dict:
        """The same request and answer as `bench/_meta_tracker.py` (`timed=False`: a warm-up, no timing)."""
        tracker, cached = self.features(request["image_size"], request["frames"])
        video = VideoTracker(tracker)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            height, width = request["video_hw"]
            state = video.init_state(
                video_height=height, video_width=width, num_frames=request["frames"], cached_features=cached
            )
            for obj_id, point in enumerate(request["clicks"], start=1):
                video.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, points=[point], labels=[1])
            start, seen = None, 0
            for frame in video.propagate_in_video(state, start_frame_idx=0):
                seen += 1
                if frame.frame_idx == 1:
                    _sync(self.device)
                    start = time.perf_counter()
            _sync(self.device)
            seconds = time.perf_counter() - start
        if seen != request["frames"]:
            raise RuntimeError(f"propagated {seen} of {request['frames']} frames")
        if not timed:
            return {}
        timed = request["frames"] - 2
        return {"seconds": seconds, "timed_frames": timed, "fps": timed / seconds}


class MetaTracker:
    """Meta's side: the worker `bench/_meta_tracker.py` in the oracle interpreter."""

    def __init__(self, worker: OracleWorker) -> None:
        self.worker = worker

    def run(self, request: dict, timed: bool = True) -> dict:
        return self.worker.request({**request, "timed": timed})


def _lookup(counts: dict, size: int) -> int:
    if size in counts:
        return counts[size]
    if "*" in counts:
        return counts["*"]
    raise SystemExit(f"no default for {size} px: give SIZE:N")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_size(specs: list[str], defaults: dict[int, int]) -> dict[int, int]:
    """SIZE:N specs over the defaults; a bare N applies to every size."""
    counts = dict(defaults)
    for spec in specs:
        size, _, count = spec.rpartition(":")
        if size:
            counts[int(size)] = int(count)
        else:
            counts = dict.fromkeys(counts, int(count))
            counts["*"] = int(count)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 1008], help="tracker image sizes (px)")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--frames", nargs="*", default=[], metavar="SIZE:N", help=f"timed frames per size (default {DEFAULT_FRAMES})"
    )
    parser.add_argument(
        "--repeats",
        nargs="*",
        default=[],
        metavar="SIZE:N",
        help=f"measurements per cell and side, median kept (default {DEFAULT_REPEATS})",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on our side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle-python", default=os.environ.get("SAM3_ORACLE_PYTHON", "/tmp/refvenv/bin/python"))
    parser.add_argument("--shared-tools", type=Path, default=os.environ.get("SAM3_SHARED_TOOLS"))
    parser.add_argument("--no-meta", action="store_true", help="time our side only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    frames = _per_size(args.frames, DEFAULT_FRAMES)
    repeats = _per_size(args.repeats, DEFAULT_REPEATS)
    device = torch.device(args.device)
    ours = OurTrackerBench(device, args.seed, args.bf16)
    worker = start_worker(args, "_meta_tracker.py", ["--device", args.device], "Meta's tracker", logger)
    meta = MetaTracker(worker) if worker else None
    start = time.perf_counter()
    rows = []
    try:
        sides = {"ours": ours} | ({"meta": meta} if meta else {})
        for size in args.sizes:
            timed, runs = _lookup(frames, size), _lookup(repeats, size)
            warmup = {"image_size": size, "frames": 2, "video_hw": VIDEO_HW, "clicks": clicks(1)}
            for side in sides.values():
                side.run(warmup, timed=False)
            for objects in args.objects:
                request = {"image_size": size, "frames": timed + 2, "video_hw": VIDEO_HW, "clicks": clicks(objects)}
                fps: dict[str, list[float]] = {name: [] for name in sides}
                for repeat in range(runs):
                    order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
                    for name in order:
                        fps[name].append(sides[name].run(request)["fps"])
                row = {"size": size, "objects": objects, "frames": timed, "repeats": runs}
                row |= {name: statistics.median(values) for name, values in fps.items()}
                logger.info("measured %s", row)
                rows.append(row)
    finally:
        if worker:
            worker.close()
    wall = time.perf_counter() - start
    dtype = "bf16 autocast" if args.bf16 else "fp32"
    print(
        f"== tracker propagation, {device.type}, {args.threads} threads, ours {dtype}, video {VIDEO_HW[0]}x{VIDEO_HW[1]}, "
        "seeded weights + synthetic features =="
    )
    print(f"{'size':>6} {'objects':>7} {'frames':>6} {'repeats':>7} {'ours fps':>9} {'Meta fps':>9} {'ours/Meta':>9}")
    for row in rows:
        meta_fps = f"{row['meta']:9.3f}" if "meta" in row else f"{'-':>9}"
        ratio = f"{row['ours'] / row['meta']:8.2f}x" if "meta" in row else f"{'-':>9}"
        print(
            f"{row['size']:>6} {row['objects']:>7} {row['frames']:>6} {row['repeats']:>7} {row['ours']:9.3f} "
            f"{meta_fps} {ratio}"
        )
    print(
        f"frames: timed frames per run (after the prompted frame 0 and a warm-up frame); repeats: runs per side "
        f"(median fps); run took {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
