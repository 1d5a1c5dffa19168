"""`memory_plan`: its counts on the tiny preset, the fused-attention accounting, the longest-clip
arithmetic, and (slow) the plan against the measured peak of a real CPU training step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sam3.tools import memory_plan as tool

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=tiny", "data.image_size=224", "data.clips_per_batch=1", "data.clip_len=4"]


@pytest.fixture(scope="module")
def tiny_cfg():
    return tool.compose_run_config("demo_shapes_video", TINY)


def test_plan_counts_parameters_and_optimizer_state_of_the_built_model(tiny_cfg):
    plan = tool.plan_memory(tiny_cfg, amp="fp32")
    model = tool.build_model(tiny_cfg, torch.device("cpu"))
    num_params = sum(p.numel() for p in model.parameters())
    assert plan.total_params == plan.trainable_params == num_params
    assert plan.grad_bytes == 4 * num_params and plan.optimizer_bytes == 8 * num_params
    assert plan.ddp_bucket_bytes == plan.autocast_weight_bytes == 0
    assert plan.activation_bytes_per_frame > 0 and plan.recompute_bytes == 0  # tiny: no checkpointing
    multi_rank_bf16 = tool.plan_memory(tiny_cfg, ranks=2, amp="bf16")
    assert multi_rank_bf16.ddp_bucket_bytes == plan.grad_bytes
    assert multi_rank_bf16.autocast_weight_bytes == 2 * num_params
    assert multi_rank_bf16.activation_bytes_per_frame == plan.activation_bytes_per_frame // 2


def test_activation_checkpointing_shrinks_the_per_frame_activations_and_adds_one_layer(tiny_cfg):
    plain = tool.plan_memory(tiny_cfg, amp="fp32")
    cfg = tool.compose_run_config("demo_shapes_video", [*TINY, "runtime.act_checkpoint=true"])
    checkpointed = tool.plan_memory(cfg, amp="fp32")
    assert checkpointed.activation_bytes_per_frame < plain.activation_bytes_per_frame / 2
    assert 0 < checkpointed.recompute_bytes < plain.activation_bytes_per_frame


def test_fused_attention_saves_no_attention_matrix():
    attention = nn.MultiheadAttention(32, 4, dropout=0.1, batch_first=True, device="meta")

    class Wrapper(nn.Module):  # saved_activation_bytes calls model(batch)
        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    x = torch.empty(2, 1024, 32, device="meta")
    math_bytes, _ = tool.saved_activation_bytes(Wrapper(), x, fused_attention=False)
    fused_bytes, _ = tool.saved_activation_bytes(Wrapper(), x, fused_attention=True)
    attention_matrix = 2 * 4 * 1024 * 1024 * 4  # (B, heads, L, L) fp32
    assert math_bytes > attention_matrix > 10 * fused_bytes
    assert torch.nn.functional.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


def test_largest_clip_fills_the_memory_left_by_the_static_part(tiny_cfg):
    plan = tool.plan_memory(tiny_cfg, amp="fp32")
    per_frame = 1.5 * plan.activation_bytes_per_frame
    budget = plan.static_bytes + 1.5 * (plan.activation_bytes_fixed + plan.recompute_bytes) + 10.5 * per_frame
    assert plan.largest_clip(budget, ranks=1) == 10
    assert plan.largest_clip(budget, ranks=4) == 40
    assert plan.largest_clip(budget, ranks=4, clips_per_batch=3) == 12
    assert plan.largest_clip(plan.static_bytes, ranks=8) == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plan_brackets_the_measured_peak_of_a_cpu_step():
    """Saved activations are a lower bound of the step's memory; with the stated headroom the plan
    covers the measured peak (one fp32 step of 4 frames of the tiny model at 224 px)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "sam3.tools.memory_plan", "--config-name", "demo_shapes_video", "--measure"]
    done = subprocess.run(
        [*command, "--ranks", "1", *TINY], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stderr
    found = re.search(
        r"measured peak ([\d.]+) MiB; planned ([\d.]+) MiB .*, ([\d.]+) MiB with activations x 1\.50", done.stderr
    )
    assert found, done.stderr
    measured, planned, with_headroom = (float(v) for v in found.groups())
    assert planned <= measured <= with_headroom, (planned, measured, with_headroom)
    assert "longest clip that fits 24 GB" in done.stderr
