"""Synthetic "shapes" videos: the embedded default dataset, written in SA-Co/VEval format.

Saturated circles, squares, triangles and diamonds on a grey background move, bounce off the borders
or pass through (entering and leaving the frame), and occlude each other (later objects on top). The
ground truth of an object in a frame is its visible part; below `MIN_VISIBLE_PIXELS` it counts as
not visible. Prompts are "<colour> <shape>", "<shape>" and "<colour> shape"; every phrase matching
a visible object is a positive pair, and a few phrases matching no object are negative pairs.
Everything is a pure function of (seed, split, video index).

    python -m sam3.data.synthetic --out DIR --num-videos 64 --num-frames 8 --image-size 128 --seed 0

writes DIR/train/ and DIR/val/, each with `annotations.json` and `video_NNNNN/TTTTT.jpg` frames.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_jpeg

from sam3.data.video_file import write_video
from sam3.ops.masks import rle_area, rle_encode, rle_to_box_xywh

logger = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 215, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SPLITS = ("train", "val")
ANNOTATION_FILE = "annotations.json"
MIN_VISIBLE_PIXELS = 6
JPEG_QUALITY = 95


def phrase_vocabulary() -> list[str]:
    """Every phrase of the dataset, in category-id order (id = position + 1)."""
    return (
        [f"{color} {shape}" for color in COLORS for shape in SHAPES]
        + list(SHAPES)
        + [f"{color} shape" for color in COLORS]
    )


def phrases_of(color: str, shape: str) -> list[str]:
    """The phrases that refer to an object of this colour and shape."""
    return [f"{color} {shape}", shape, f"{color} shape"]


@dataclass
class ShapeTrack:
    """One rendered object.

    Attributes:
        color: colour name (a key of COLORS).
        shape: shape name (one of SHAPES).
        masks: (T, H, W) bool visible pixels per frame (empty where not visible).
    """

    color: str
    shape: str
    masks: torch.Tensor


def synthetic_video(
    seed: int, split: str, video_idx: int, num_frames: int, image_size: int
) -> tuple[torch.Tensor, list[ShapeTrack]]:
    """Renders one video: (T, 3, S, S) uint8 frames and its objects, from (seed, split, video index)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), video_idx]))
    size, frames_count = image_size, num_frames
    num_objects = int(rng.integers(2, 5))
    centres = np.zeros((num_objects, frames_count, 2))
    radii = rng.uniform(0.08, 0.16, num_objects) * size
    kinds = []
    for k in range(num_objects):
        kinds.append((list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]))
        speed = rng.uniform(0.01, 0.05) * size
        angle = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(angle), np.sin(angle)])
        r = radii[k]
        position = rng.uniform(r, size - r, 2)
        bounces = rng.random() < 0.7
        if not bounces:  # pass through: start earlier on the same line, possibly outside the frame
            position = position - velocity * rng.integers(0, frames_count)
        for t in range(frames_count):
            centres[k, t] = position
            position = position + velocity
            if bounces:
                for axis in range(2):
                    if not r <= position[axis] <= size - r:
                        velocity[axis] = -velocity[axis]
                        position[axis] = np.clip(position[axis], r, size - r)
    background = int(rng.integers(40, 110))

    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centres_t = torch.from_numpy(centres).float()  # (K, T, 2)
    frames = torch.full((frames_count, 3, size, size), background, dtype=torch.uint8)
    visible = torch.zeros(num_objects, frames_count, size, size, dtype=torch.bool)
    covered = torch.zeros(frames_count, size, size, dtype=torch.bool)
    for k in reversed(range(num_objects)):  # topmost first, to cut what lies under it
        dx = xs - centres_t[k, :, 0, None, None]  # (T, H, W)
        dy = ys - centres_t[k, :, 1, None, None]
        full = _shape_mask(kinds[k][1], dx, dy, float(radii[k]))
        visible[k] = full & ~covered
        covered |= full
    for k in range(num_objects):
        colour = torch.tensor(COLORS[kinds[k][0]], dtype=torch.uint8)[None, :, None, None]
        frames = torch.where(visible[k][:, None], colour, frames)
    small = visible.flatten(-2).sum(-1) < MIN_VISIBLE_PIXELS  # (K, T)
    visible[small] = False
    tracks = [ShapeTrack(color, shape, visible[k]) for k, (color, shape) in enumerate(kinds)]
    return frames, tracks


def generate_split(
    out_dir: str | Path,
    split: str,
    num_videos: int,
    num_frames: int,
    image_size: int,
    seed: int,
    num_negatives: int = 3,
    video_files: bool = False,
) -> Path:
    """Writes one split (frames and SA-Co/VEval JSON) under `out_dir`/`split`; returns the JSON path.

    With `video_files` each video is one H.264 .mp4 (every frame a keyframe, so a rank decodes exactly its
    own frames) named by the record's `video_file`, instead of a folder of JPEG frames.
    """
    root = Path(out_dir) / split
    root.mkdir(parents=True, exist_ok=True)
    vocabulary = phrase_vocabulary()
    category_id = {phrase: i + 1 for i, phrase in enumerate(vocabulary)}
    videos, annotations, pairs = [], [], []
    for video_idx in range(num_videos):
        frames, tracks = synthetic_video(seed, split, video_idx, num_frames, image_size)
        name = f"video_{video_idx:05d}"
        record = {"id": video_idx, "video_name": name, "height": image_size, "width": image_size, "length": num_frames}
        if video_files:
            write_video(root / f"{name}.mp4", (f.permute(1, 2, 0).numpy() for f in frames), fps=10, gop_size=1)
            record["video_file"] = f"{name}.mp4"
        else:
            (root / name).mkdir(exist_ok=True)
            record["file_names"] = [f"{name}/{t:05d}.jpg" for t in range(num_frames)]
            for t, file_name in enumerate(record["file_names"]):
                write_jpeg(frames[t], str(root / file_name), quality=JPEG_QUALITY)
        videos.append(record)
        shown = [track for track in tracks if track.masks.any()]
        matches: dict[str, list[ShapeTrack]] = {}
        for track in shown:
            for phrase in phrases_of(track.color, track.shape):
                matches.setdefault(phrase, []).append(track)
        for phrase, phrase_tracks in matches.items():
            for track in phrase_tracks:
                annotations.append(_annotation(len(annotations) + 1, video_idx, category_id[phrase], phrase, track))
        referred = {p for track in tracks for p in phrases_of(track.color, track.shape)}
        absent = [p for p in vocabulary if p not in referred]
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), video_idx, 1]))
        negatives = [absent[i] for i in sorted(rng.choice(len(absent), min(num_negatives, len(absent)), False))]
        for phrase in list(matches) + negatives:
            pairs.append(
                {
                    "id": len(pairs) + 1,
                    "video_id": video_idx,
                    "category_id": category_id[phrase],
                    "noun_phrase": phrase,
                    "num_masklets": len(matches.get(phrase, [])),
                }
            )
    data = {
        "info": {"description": f"synthetic shapes videos, split {split}, seed {seed}"},
        "videos": videos,
        "annotations": annotations,
        "categories": [{"id": category_id[p], "name": p} for p in vocabulary],
        "video_np_pairs": pairs,
    }
    path = root / ANNOTATION_FILE
    path.write_text(json.dumps(data))
    return path


def generate_dataset(
    out_dir: str | Path,
    num_videos: int,
    num_frames: int,
    image_size: int,
    seed: int,
    num_val_videos: int | None = None,
    num_negatives: int = 3,
    video_files: bool = False,
) -> dict[str, Path]:
    """Writes the train and val splits; returns each split's annotation file."""
    val_videos = max(1, num_videos // 4) if num_val_videos is None else num_val_videos
    counts = {"train": num_videos, "val": val_videos}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only contend (8x slower on 2 busy cores)
    try:
        return {
            split: generate_split(
                out_dir, split, counts[split], num_frames, image_size, seed, num_negatives, video_files
            )
            for split in SPLITS
        }
    finally:
        torch.set_num_threads(threads)


def _shape_mask(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """(H, W) bool pixels of a shape centred at offset 0, given pixel offsets dx, dy."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= 0.8 * radius
    if shape == "diamond":
        return dx.abs() + dy.abs() <= 1.1 * radius
    if shape == "triangle":  # apex up at -radius, base at +0.75 radius
        return (dy <= 0.75 * radius) & (dx.abs() <= 0.95 * (dy + radius) / 1.75)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _annotation(ann_id: int, video_id: int, category: int, phrase: str, track: ShapeTrack) -> dict:
    rles = rle_encode(track.masks)
    boxes = rle_to_box_xywh(rles).tolist()
    areas = rle_area(rles).tolist()
    shown = track.masks.flatten(1).any(1).tolist()
    height, width = track.masks.shape[-2:]
    return {
        "id": ann_id,
        "video_id": video_id,
        "category_id": category,
        "noun_phrase": phrase,
        "segmentations": [rle if s else None for rle, s in zip(rles, shown, strict=True)],
        "bboxes": [box if s else None for box, s in zip(boxes, shown, strict=True)],
        "areas": [area if s else None for area, s in zip(areas, shown, strict=True)],
        "iscrowd": 0,
        "height": height,
        "width": width,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (train/ and val/ are created in it)")
    parser.add_argument("--num-videos", type=int, default=64, help="training videos")
    parser.add_argument("--num-val-videos", type=int, default=None, help="validation videos (default: a quarter)")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-negatives", type=int, default=3, help="negative phrases per video")
    parser.add_argument("--video-files", action="store_true", help="one .mp4 per video instead of JPEG frames")
    args = parser.parse_args(argv)
    paths = generate_dataset(
        args.out,
        args.num_videos,
        args.num_frames,
        args.image_size,
        args.seed,
        args.num_val_videos,
        args.num_negatives,
        args.video_files,
    )
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
