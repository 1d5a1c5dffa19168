"""`bench/image_encoder.py`'s compute floor: the FLOP count it divides by the GEMM rate is the encoder's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sam3.model_builder import model_config

BENCH = Path(__file__).resolve().parents[1] / "bench" / "image_encoder.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_image_encoder", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_floor_counts_every_linear_layer_of_the_trunk_and_attention():
    floor = load_bench().compute_floor(1008)  # 72 x 72 tokens: 3 x 3 windows of 24 x 24, no padding
    trunk = model_config("sam3").backbone.vision_backbone.trunk
    side, dim = 1008 // trunk.patch_size, trunk.embed_dim
    tokens, hidden = side * side, int(dim * trunk.mlp_ratio)
    per_block = dim * 3 * dim + dim * dim + 2 * dim * hidden  # qkv, proj, fc1, fc2 weights
    assert floor.flops["linear layers"] == 2 * tokens * per_block * trunk.depth
    num_global = len(trunk.global_attn_blocks)
    windowed = (side // trunk.window_size) ** 2 * trunk.window_size**4  # sum over windows of L^2
    pairs = num_global * tokens**2 + (trunk.depth - num_global) * windowed
    assert floor.flops["attention"] == 2 * 2 * pairs * dim  # q k^T and (attention) v
    assert floor.gemm_flops_per_s > 1e9
    assert floor.seconds == pytest.approx(sum(floor.flops.values()) / floor.gemm_flops_per_s)
