"""Compare two TRACKER_SESSION_V1 output files (ours against Meta's) with the reference README's tolerance rule.

    python -m sam3.tools.compare_tracker ours.pt official.pt

Gate (`../shared/reference/README.md`, "Tolerance and determinism (tracker recipes)"):
- same keys and shapes; `maskmem_features` stored as bfloat16 in both files;
- every mask tensor (`MASK_KINDS`, the last key component): max |ours - official| / scale < 1e-4, where scale
  is the robust std (1.4826 x median absolute deviation) of all official values of that kind, so the -1024
  no-object sentinels do not inflate it (where over half of the values are sentinels, which makes it 0, the
  values other than +-1024 set it);
- outputs downstream of a binarisation flip are held to 3e-3 instead. A flip is detected on the frames whose
  memory is encoded binarised (official events stored as `cond_frame_outputs` with a new memory): both
  files' yielded `low_res_masks` are upsampled to image_size (bilinear, align_corners=False) and their signs
  compared, raw and after the non-overlap rule (only the per-pixel argmax object may stay positive); any
  difference is a flip at that (step, frame), and the outputs of later events of the same session
  (plain or `memsel/`) are downstream.
Every other tensor (scores, IoUs, pointers, features, memories, memory-attention maps) is reported as
max |diff| / std of the official values, not gated.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

MASK_KINDS = ("masks", "low_res_masks", "video_res_masks", "pred_masks", "decoder_all_masks")
REL_TOL = 1e-4
NO_OBJ_SCORE = 1024.0  # |sentinel| of absent objects' logits and of thresholded mask prompts
REL_TOL_AFTER_FLIP = 3e-3
SESSION_PREFIXES = ("", "memsel/")


@dataclass
class TrackerComparison:
    """Outcome of `compare_tracker`: the gate's failures and the figures behind them."""

    failures: list[str] = field(default_factory=list)
    flips: list[tuple[str, str, int]] = field(default_factory=list)  # (session prefix, step, frame)
    mask_errors: dict[str, float] = field(default_factory=dict)  # key -> max |diff| / scale of its kind
    other_errors: dict[str, float] = field(default_factory=dict)  # key -> max |diff| / std(official)
    scales: dict[str, float] = field(default_factory=dict)  # mask kind -> robust std

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst_by_kind(self, errors: dict[str, float] | None = None) -> dict[str, float]:
        """Largest relative error per (session, kind), e.g. {"low_res_masks": .., "memsel/low_res_masks": ..}."""
        worst: dict[str, float] = {}
        for key, err in (self.mask_errors if errors is None else errors).items():
            group = ("memsel/" if key.startswith("memsel/") else "") + key.rsplit("/", 1)[-1]
            worst[group] = max(worst.get(group, 0.0), err)
        return worst

    def report(self) -> str:
        lines = [f"tracker parity: {'PASS' if self.passed else 'FAIL'}"]
        lines += [f"  scale[{kind}] = {scale:.4g}" for kind, scale in self.scales.items()]
        lines += [f"  max mask diff / scale  {group:<30s} {err:.3e}" for group, err in self.worst_by_kind().items()]
        lines += [f"  binarisation flip at {prefix}{step}/f{frame}" for prefix, step, frame in self.flips]
        others = self.worst_by_kind(self.other_errors)
        lines += [f"  (reported) max diff / std  {group:<30s} {err:.3e}" for group, err in others.items()]
        lines += [f"  FAIL {msg}" for msg in self.failures]
        return "\n".join(lines)


def robust_std(values: torch.Tensor) -> float:
    """1.4826 x the median absolute deviation of all values."""
    values = values.flatten().double()
    return float(1.4826 * (values - values.median()).abs().median())


def mask_scale(values: torch.Tensor) -> float:
    """The robust std of a mask kind's official values; where over half of them are the +-1024 sentinels
    (sessions whose objects are mostly absent) it is 0, and the values other than the sentinels set it."""
    scale = robust_std(values)
    if scale == 0:
        scale = robust_std(values[values.abs() != NO_OBJ_SCORE])
    return scale


def compare_tracker(ours: dict, official: dict, *, image_size: int | None = None) -> TrackerComparison:
    """Gate `ours` against `official` (both {"tensors", "meta"} as `torch.load` returns them)."""
    result = TrackerComparison()
    a, b = ours["tensors"], official["tensors"]
    for key in sorted(set(a) ^ set(b)):
        result.failures.append(f"{key}: only in {'ours' if key in a else 'official'}")
    common = [k for k in b if k in a]
    for key in common:
        if a[key].shape != b[key].shape:
            result.failures.append(f"{key}: shape {tuple(a[key].shape)} != official {tuple(b[key].shape)}")
        if key.endswith("/maskmem_features") or key == "maskmem_features":
            for name, t in (("ours", a[key]), ("official", b[key])):
                if t.dtype != torch.bfloat16:
                    result.failures.append(f"{key}: {name} stored as {t.dtype}, not bfloat16")
    common = [k for k in common if a[k].shape == b[k].shape]

    meta = official["meta"]
    size = image_size or meta.get("tracker_config", {}).get("image_size") or ours["meta"].get("image_size") or 224
    downstream_from: dict[str, int] = {}  # session prefix -> index of its first flipped event
    event_index: dict[tuple[str, str, int | None], int] = {}
    for prefix in SESSION_PREFIXES:
        session_meta = meta if not prefix else meta.get("memsel", {})
        for i, event in enumerate(session_meta.get("events", [])):
            event_index.setdefault((prefix, event["step"], event["frame"]), i)
            event_index.setdefault((prefix, event["step"], None), i)
            if event.get("storage") != "cond_frame_outputs" or event.get("new_maskmem") is False:
                continue
            key = f"{prefix}{event['step']}/f{event['frame']}/low_res_masks"
            if key in a and key in b and a[key].shape == b[key].shape and _binarisation_differs(a[key], b[key], size):
                result.flips.append((prefix, event["step"], event["frame"]))
                downstream_from.setdefault(prefix, i)

    kinds = {k.rsplit("/", 1)[-1] for k in common} & set(MASK_KINDS)
    for kind in sorted(kinds):
        result.scales[kind] = mask_scale(torch.cat([b[k].flatten() for k in common if k.endswith("/" + kind)]))
    for key in common:
        diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        kind = key.rsplit("/", 1)[-1]
        if kind not in kinds:
            std = b[key].double().std().item() if b[key].numel() > 1 else 0.0
            result.other_errors[key] = diff / std if std > 0 else diff
            continue
        err = diff / result.scales[kind]
        result.mask_errors[key] = err
        prefix, event = _event_of(key, event_index)
        flip_at = downstream_from.get(prefix)
        tol = REL_TOL_AFTER_FLIP if flip_at is not None and event is not None and event > flip_at else REL_TOL
        if not err < tol:
            result.failures.append(f"{key}: max |diff| / scale = {err:.3e} >= {tol:g}")
    return result


def _binarisation_differs(ours: torch.Tensor, official: torch.Tensor, image_size: int) -> bool:
    """Whether the memory encoder's binarised input would differ: signs raw or after the non-overlap rule."""
    masks = []
    for low_res in (ours, official):
        up = F.interpolate(low_res.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
        # up: (O, 1, S, S); the argmax object keeps its logit, the others are pushed below 0
        keep = up.argmax(dim=0, keepdim=True) == torch.arange(up.shape[0]).view(-1, 1, 1, 1)
        masks.append((up > 0, keep & (up > 0)))
    return any(bool((x != y).any()) for x, y in zip(*masks, strict=True))


def _event_of(key: str, event_index: dict) -> tuple[str, int | None]:
    """The session prefix and event index of an output key (`[memsel/]<step>[/f<frame>]/<kind>`)."""
    prefix = "memsel/" if key.startswith("memsel/") else ""
    parts = key[len(prefix) :].split("/")
    frame = int(parts[1][1:]) if len(parts) > 2 and parts[1].startswith("f") and parts[1][1:].isdigit() else None
    return prefix, event_index.get((prefix, parts[0], frame))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ours", type=Path)
    parser.add_argument("official", type=Path)
    parser.add_argument("--image-size", type=int, default=None, help="default: the official meta's, else 224")
    args = parser.parse_args(argv)
    ours = torch.load(args.ours, weights_only=True)
    official = torch.load(args.official, weights_only=True)
    result = compare_tracker(ours, official, image_size=args.image_size)
    print(result.report())
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
