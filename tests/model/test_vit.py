"""Tiny-preset image encoder: shapes at several input sizes, gradients, RoPE for new sizes,
activation checkpointing, the frozen feature extractor."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from sam3.checkpoint import load_state_dict
from sam3.model.vit import Mlp, ViT
from sam3.model_builder import model_config

# Parameters that by design never get a gradient in image grounding (reference README): the neck's
# 0.5x level (not passed on) and CLIP's pooled text projection (per-token features are used).
NO_GRAD_BY_DESIGN = (
    "vision_backbone.convs.3.",
    "vision_backbone.sam2_convs.",  # the interactive heads' pyramid, not computed by `forward`
    "language_backbone.encoder.text_projection",
)


def tiny_config(**trunk_overrides):
    return model_config("tiny", [f"backbone.vision_backbone.trunk.{k}={v}" for k, v in trunk_overrides.items()])


def tiny_trunk(**overrides) -> ViT:
    cfg = tiny_config(**overrides).backbone.vision_backbone.trunk
    return instantiate(cfg)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return instantiate(tiny_config().backbone)


@pytest.mark.parametrize("size_hw", [(224, 224), (252, 252), (336, 336), (196, 308)])
def test_pyramid_shapes_at_any_multiple_of_14(backbone, size_hw):
    backbone.eval()
    h, w = size_hw
    with torch.no_grad():
        out = backbone.forward_image(torch.randn(2, 3, h, w))
    gh, gw = h // 14, w // 14
    d_model = 64
    expected = [(2, d_model, gh * 4, gw * 4), (2, d_model, gh * 2, gw * 2), (2, d_model, gh, gw)]
    assert [tuple(f.shape) for f in out["backbone_fpn"]] == expected
    assert [tuple(p.shape) for p in out["vision_pos_enc"]] == expected
    assert out["vision_features"] is out["backbone_fpn"][-1]
    assert all(torch.isfinite(f).all() for f in out["backbone_fpn"])


@pytest.mark.parametrize("size_hw", [(225, 224), (224, 230)])
def test_non_multiple_of_patch_size_is_rejected(backbone, size_hw):
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        backbone.forward_image(torch.randn(1, 3, *size_hw))


def test_every_used_parameter_gets_a_gradient(backbone):
    backbone.train()
    out = backbone(torch.randn(2, 3, 224, 252), ["a red circle", "dog"])
    loss = sum((f**2).mean() for f in out["backbone_fpn"]) + (out["language_features"] ** 2).mean()
    backbone.zero_grad(set_to_none=True)
    loss.backward()
    without = sorted(n for n, p in backbone.named_parameters() if p.grad is None)
    assert without == sorted(n for n, _ in backbone.named_parameters() if n.startswith(NO_GRAD_BY_DESIGN))
    for name, p in backbone.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{name}: all-zero gradient"


def test_rope_for_a_new_size_equals_a_model_built_at_that_size():
    torch.manual_seed(0)
    built_224 = tiny_trunk(drop_path_rate=0.0).eval()
    built_336 = tiny_trunk(img_size=336, drop_path_rate=0.0).eval()
    # Same weights; the 224-built model's RoPE tables (file side) are checked against the 336-built
    # model's recomputation for the 224 grid, so loading across sizes is exact, not lenient.
    report = load_state_dict(built_336, built_224.state_dict())
    assert len(report.rope_checked) == len(built_224.blocks)
    images = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        torch.testing.assert_close(built_224(images), built_336(images), rtol=0, atol=0)
    for i in built_224.global_attn_blocks:
        rebuilt = built_224.blocks[i].attn._table(24, 24, images.device)
        assert torch.equal(rebuilt, built_336.blocks[i].attn.freqs_cis)
    # Windowed blocks keep one table (a window) whatever the input size.
    windowed = next(i for i in range(len(built_224.blocks)) if i not in built_224.global_attn_blocks)
    assert torch.equal(built_224.blocks[windowed].attn.freqs_cis, built_336.blocks[windowed].attn.freqs_cis)


def test_training_after_inference_mode_at_a_new_size(backbone):
    images = torch.randn(1, 3, 280, 280)
    backbone.eval()
    with torch.inference_mode():
        backbone.forward_image(images)
    backbone.train()
    out = backbone.forward_image(images)
    (out["backbone_fpn"][0].mean() + out["vision_pos_enc"][0].mul(out["backbone_fpn"][0]).mean()).backward()


def test_rope_tables_survive_casts_and_materialisation():
    torch.manual_seed(0)
    reference = tiny_trunk()
    tables = [b.attn.freqs_cis.clone() for b in reference.blocks]
    cast = copy.deepcopy(reference).to(torch.bfloat16)
    with torch.device("meta"):
        on_meta = tiny_trunk()
    materialised = on_meta.to_empty(device="cpu")
    for model in (cast, materialised):
        for block, table in zip(model.blocks, tables, strict=True):
            assert block.attn.freqs_cis.dtype == torch.complex64
            assert torch.equal(block.attn.freqs_cis, table)


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    plain = tiny_trunk(drop_path_rate=0.0).train()
    ckpt = copy.deepcopy(plain)
    ckpt.use_act_checkpoint = True
    images = torch.randn(1, 3, 224, 224)
    for model in (plain, ckpt):
        model(images).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_stochastic_depth_is_active_only_in_training():
    torch.manual_seed(0)
    trunk = tiny_trunk(drop_path_rate=0.9)
    images = torch.randn(4, 3, 224, 224)
    trunk.eval()
    with torch.no_grad():
        assert torch.equal(trunk(images), trunk(images))
        trunk.train()
        assert not torch.equal(trunk(images), trunk(images))


def test_window_ordered_stream_equals_partitioning_in_every_block():
    torch.manual_seed(0)
    trunk = tiny_trunk(drop_path_rate=0.0).eval()
    grid = trunk.window_size * 2  # a grid of whole windows: the stream is kept window by window
    images = torch.randn(2, 3, grid * trunk.patch_size, grid * trunk.patch_size)
    with torch.no_grad():
        fast = trunk(images)
        trunk.window_size = 0  # every windowed block partitions and restores the grid itself
        per_block = trunk(images)
    torch.testing.assert_close(fast, per_block, rtol=0, atol=1e-5)


def test_inference_linears_agree_with_the_autograd_path():
    torch.manual_seed(0)
    trunk = tiny_trunk(drop_path_rate=0.0).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        inference = trunk(images)  # oneDNN linears, GELU fused (float32 CPU)
    autograd = trunk(images)  # F.linear: parameters require grad
    assert autograd.requires_grad
    torch.testing.assert_close(inference, autograd.detach(), rtol=1e-5, atol=1e-5)


def test_fast_linears_leave_autocast_and_adapters_alone():
    """Under autocast the MLP computes in bf16 as `F.linear` would; a wrapped layer's own forward runs."""
    mlp = Mlp(16, 32).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert mlp(x).dtype == torch.bfloat16

    class Shifted(torch.nn.Linear):  # stands for an adapter-wrapped linear: its forward adds to W x + b
        def forward(self, x):
            return super().forward(x) + 1.0

    shifted = Shifted(32, 16)
    shifted.load_state_dict(mlp.fc2.state_dict())
    with torch.no_grad():
        plain = mlp(x)
        mlp.fc2 = shifted
        torch.testing.assert_close(mlp(x), plain + 1.0)
