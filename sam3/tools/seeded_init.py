"""Deterministic weights and input shared with the official-reference recipe.

SEEDED_INIT_V1 draws every tensor of a state dict from a generator seeded by the
key alone, so any implementation that follows the same key names can rebuild the
weights used to record `sam3_image_seeded_outputs.pt` (see `../shared/reference/README.md`).
FIXED_INPUT_V1 is the synthetic 1008 px image, already normalised to [-1, 1].
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch

# Learned tables drawn with unit standard deviation instead of fan-in scaling.
UNIT_STD_SUFFIXES = (
    "pos_embed",
    "positional_embedding",
    "token_embedding.weight",
    "query_embed.weight",
    "reference_points.weight",
    "presence_token.weight",
    "label_embed.weight",
    "cls_embed.weight",
)
FIXED_INPUT_SIZE = 1008


def read_manifest(manifest_path: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """Parse a state-dict manifest (`key<TAB>shape<TAB>dtype` per line).

    Returns:
        (key, shape, dtype name) per entry, in file order.
    """
    entries = []
    for line_no, line in enumerate(Path(manifest_path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{manifest_path}:{line_no}: expected 'key<TAB>shape<TAB>dtype', got {line!r}")
        key, shape_text, dtype = fields
        shape = tuple(int(s) for s in shape_text.strip("()").split(",") if s.strip())
        entries.append((key, shape, dtype))
    return entries


def seeded_tensor(key: str, shape: Iterable[int], seed: int) -> torch.Tensor:
    """One float32 tensor of SEEDED_INIT_V1, a function of (seed, key, shape) only."""
    shape = tuple(shape)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    z = torch.randn(shape, generator=generator, dtype=torch.float32)
    if key.endswith(UNIT_STD_SUFFIXES):
        return z
    if len(shape) >= 2:
        fan_in = math.prod(shape) // shape[0]
        return z * (fan_in**-0.5)
    if key.endswith(".weight"):
        return 1.0 + 0.1 * z
    return 0.1 * z


def seeded_state_dict(
    manifest_path: str | Path, seed: int = 0, keys: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """SEEDED_INIT_V1 weights for the float32 entries of a manifest.

    Complex RoPE tables are not drawn (the model computes them); they are left out.

    Args:
        manifest_path: the official state-dict manifest.
        seed: the seed of the recipe (the reference outputs use 0).
        keys: restrict to these keys, or to keys starting with a given prefix when an
            entry ends with "."; None keeps every float32 entry.

    Returns:
        key -> float32 tensor, in manifest order.
    """
    wanted = None if keys is None else list(keys)
    out = {}
    for key, shape, dtype in read_manifest(manifest_path):
        if dtype != "float32":
            continue
        if wanted is not None and not any(key == w or (w.endswith(".") and key.startswith(w)) for w in wanted):
            continue
        out[key] = seeded_tensor(key, shape, seed)
    if wanted is not None:
        unmatched = [w for w in wanted if not any(k == w or (w.endswith(".") and k.startswith(w)) for k in out)]
        if unmatched:
            raise KeyError(f"{manifest_path}: no float32 entry matches {unmatched}")
    return out


def fixed_input(size: int = FIXED_INPUT_SIZE) -> torch.Tensor:
    """FIXED_INPUT_V1: a (1, 3, size, size) float32 image in [-1, 1] (two squares on sine waves).

    The reference outputs use the default size 1008; other sizes rescale the waves but keep the
    squares at the same pixel coordinates.
    """
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    img = torch.stack([torch.sin(2 * math.pi * ((c + 1) * 1.5 * x / size + (3 - c) * y / size) + c) for c in range(3)])
    img[:, 300:700, 250:650] = 0.6 * img[:, 300:700, 250:650] + 0.35
    img[:, 100:260, 640:900] = 0.5 * img[:, 100:260, 640:900] - 0.45
    return img.to(torch.float32)[None]
