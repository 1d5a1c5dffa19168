"""Per-rank target memory of a `roboflow_video_ft`-shaped step: padded bool masks vs packed bits.

Before (issue 20, item 4), `PairTargets` carried `masks_padded` (Npairs, Nmax, S, S) bool: a mask for
every (frame, prompt) pair and every slot up to the batch's largest prompt, visible or not. Now it
carries `masks`, the visible instances' masks only, one bit per pixel (`BitMasks`); the loss reads
the same pixels (bit-identical values, `tests/data/test_target_masks.py`).

The step: S = 1008 px, clips of T = 8 frames, `data.clips_per_batch` clips (configs/data/
video_grounding.yaml: 1), every frame on this rank (frame group size 1, the most a rank holds; with
F ranks per group a rank holds T / F frames and both columns shrink alike), `max_prompts` 8 and
`max_masklets` 64 as in the config. The masks are synthetic (discs); how many masklets each prompt
has and how many are visible decides the padding, so each row is one layout:
  even: 8 prompts x 8 masklets, all visible on every frame: no padding, bits alone (the least gain);
  typical: 8 prompts (2 negatives) with 20, 12, 8, 6, 4, 2 masklets, 80 % visible per frame;
  single: 1 prompt with 1 masklet (the padding is nil, again bits alone).
"After" bytes are measured on the `PairTargets` that `collate_clips` builds from the clips (every
tensor of it, boxes and flags included); "before" is the same with the padded bool masks instead.

    python bench/target_memory.py [--image-size 1008] [--num-frames 8] [--clips 1] [--group-size 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from sam3.data.collate import ClipSample, collate_clips
from sam3.structures import PairTargets

LAYOUTS = {
    "even": ([8] * 8, 1.0),
    "typical": ([20, 12, 8, 6, 4, 2, 0, 0], 0.8),
    "single": ([1], 1.0),
}


def tensor_bytes(value) -> int:
    """Bytes of every tensor inside `value` (dataclasses, lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


def make_clip(counts: list[int], visible_prob: float, num_local: int, size: int, clip_id: int) -> ClipSample:
    """A clip of `num_local` frames whose prompts have `counts` masklets (discs), `visible_prob` visible."""
    g = torch.Generator().manual_seed(clip_id)
    num_inst = sum(counts)
    visible = torch.rand(num_local, num_inst, generator=g) < visible_prob  # (F, N)
    centres = 0.2 + 0.6 * torch.rand(num_local, num_inst, 2, generator=g)
    radius = 0.03 + 0.1 * torch.rand(num_local, num_inst, generator=g)
    grid = (torch.arange(size) + 0.5) / size
    masks = torch.empty(num_local, num_inst, size, size, dtype=torch.bool)
    for f in range(num_local):
        for n in range(num_inst):
            dx = (grid - centres[f, n, 0]).square()
            dy = (grid - centres[f, n, 1]).square()
            masks[f, n] = (dy[:, None] + dx[None, :] <= radius[f, n] ** 2) & visible[f, n]
    boxes = torch.cat([centres, 2 * radius[..., None].expand(-1, -1, 2)], -1) * visible[..., None]
    instances, start = [], 0
    for count in counts:
        instances.append(list(range(start, start + count)))
        start += count
    return ClipSample(
        images=torch.zeros(num_local, 3, 1, 1).expand(-1, -1, size, size),  # not measured: no memory
        frame_indices=torch.arange(num_local),
        num_frames=num_local,
        prompts=[f"phrase {p}" for p in range(len(counts))],
        prompt_instances=instances,
        is_exhaustive=[True] * len(counts),
        is_positive=[c > 0 for c in counts],
        boxes_cxcywh=boxes,
        is_visible=visible,
        masks=masks,
        video_id=clip_id,
        orig_size=(size, size),
        file_names=[],
        clip_id=(0, clip_id),
    )


def measure(counts: list[int], visible_prob: float, args) -> dict[str, float]:
    num_local = -(-args.num_frames // args.group_size)  # rank 0 of the group holds the most frames
    clips = [make_clip(counts, visible_prob, num_local, args.image_size, c) for c in range(args.clips)]
    start = time.perf_counter()
    targets = collate_clips(clips).targets
    collate_s = time.perf_counter() - start
    assert isinstance(targets, PairTargets) and targets.masks is not None, "the clips carry masks"
    padded_masks = targets.is_visible_padded.numel() * args.image_size**2  # (Npairs, Nmax, S, S) bool
    after = tensor_bytes(targets)
    before = after - tensor_bytes(targets.masks) + padded_masks
    return {
        "pairs": len(targets),
        "slots": targets.is_visible_padded.numel(),
        "visible": targets.total_boxes,
        "before": before,
        "after": after,
        "collate_s": collate_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=1008)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--clips", type=int, default=1, help="clips per batch (data.clips_per_batch)")
    parser.add_argument("--group-size", type=int, default=1, help="ranks per frame group (a rank holds T / F frames)")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"roboflow_video_ft step, one rank: {args.clips} clip(s) x {args.num_frames} frames / group size "
        f"{args.group_size} at {args.image_size} px; max_prompts 8, max_masklets 64"
    )
    print(
        f"{'layout':>8} {'pairs':>6} {'slots':>6} {'visible':>8} {'before MB':>10} {'after MB':>9} "
        f"{'ratio':>7} {'collate s':>10}"
    )
    ratios = {}
    for name in args.layouts:
        r = measure(*LAYOUTS[name], args)
        ratios[name] = r["before"] / r["after"]
        print(
            f"{name:>8} {r['pairs']:>6} {r['slots']:>6} {r['visible']:>8} {r['before'] / 2**20:>10.1f} "
            f"{r['after'] / 2**20:>9.1f} {ratios[name]:>6.1f}x {r['collate_s']:>10.2f}"
        )
    print("ratios: target bytes before / after: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
