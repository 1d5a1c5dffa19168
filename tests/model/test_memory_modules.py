"""The tracker's memory encoder and memory attention against Meta's TRACKER_SESSION_V1 (seed 0, 224 px).

Weights: SEEDED_INIT_V1 on the released names (`tracker.maskmem_backbone.*`, `tracker.transformer.encoder.*`).
Features: FIXED_FEATURES_V1 through our seeded neck's `sam2_convs` pyramid; level 2 (16x16) is the pixel
feature. The memory attention is held to 1e-4 x std of Meta's output; the memory encoder's bfloat16
features to one bf16 ulp, its position encoding to 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from sam3.model.memory_attention import MemoryAttention
from sam3.model.memory_encoder import MemoryEncoder, build_memory_encoder
from sam3.model.position_encoding import PositionEmbeddingSine
from sam3.tools.reference_interactive import IMAGE_SIZE, FixedTrunk, build_seeded_heads
from sam3.tools.seeded_init import read_manifest, seeded_tensor
from tests.helpers import REFERENCE_DIR, reference_file

TRACKER_OUTPUTS = reference_file("sam3_tracker_seeded_outputs.pt")
LAYOUT = REFERENCE_DIR / "sam3_checkpoint_layout_state_dict.tsv"
ENCODER_NAME = "tracker.maskmem_backbone."
ATTENTION_NAME = "tracker.transformer.encoder."
GRID = IMAGE_SIZE // 14
REL_TOL = 1e-4


def seeded(module: torch.nn.Module, prefix: str) -> torch.nn.Module:
    """`module` with SEEDED_INIT_V1 (seed 0) weights keyed by released names, in eval mode."""
    with torch.no_grad():
        for key, tensor in module.state_dict(keep_vars=True).items():
            tensor.copy_(seeded_tensor(prefix + key, tensor.shape, 0))
    return module.eval()


def tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return x.flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    if TRACKER_OUTPUTS is None:
        pytest.skip("sam3_tracker_seeded_outputs.pt: the shared reference folder is absent")
    return torch.load(TRACKER_OUTPUTS, weights_only=True)["tensors"]


@pytest.fixture(scope="module")
def pixel_features() -> dict[int, torch.Tensor]:
    """Frame -> (1, 256, 16, 16) level 2 of the seeded `sam2_convs` pyramid on FIXED_FEATURES_V1."""
    neck, _ = build_seeded_heads(seed=0)
    levels = {}
    with torch.no_grad():
        for frame in (0, 1):
            neck.trunk = FixedTrunk(frame=frame)
            _, _, sam2_fpn, _ = neck.forward_dual(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), num_levels=4)
            levels[frame] = sam2_fpn[2]
    return levels


@pytest.mark.parametrize(
    ("module", "prefix"),
    [(lambda: build_memory_encoder(), ENCODER_NAME), (lambda: MemoryAttention(), ATTENTION_NAME)],
    ids=["memory_encoder", "memory_attention"],
)
def test_state_dict_matches_released_layout(module, prefix):
    released = {key[len(prefix) :]: shape for key, shape, _ in read_manifest(LAYOUT) if key.startswith(prefix)}
    ours = {key: tuple(t.shape) for key, t in module().state_dict().items()}
    assert ours == released


def test_pixel_features_match_official(official, pixel_features):
    for frame, level in pixel_features.items():
        torch.testing.assert_close(level[0, :8, :4, :4], official[f"features/f{frame}/fpn2_crop"], rtol=0, atol=1e-5)
    pos = PositionEmbeddingSine(256, normalize=True)(pixel_features[1])
    torch.testing.assert_close(pos[0, :, :4, :4], official["features/vision_pos_enc2_crop"], rtol=0, atol=1e-6)


def test_memory_attention_matches_official(official, pixel_features):
    """Call 00: frame 1 of the forward propagation, object 1, frame 0's memory and one pointer (4 tokens)."""
    attention = seeded(MemoryAttention(), ATTENTION_NAME)
    curr = pixel_features[1]
    curr_pos = PositionEmbeddingSine(256, normalize=True)(curr)
    memory = official["memattn/00/prompt_obj0"].transpose(0, 1)  # 1, 260, 64
    memory_pos = official["memattn/00/prompt_pos_obj0"].transpose(0, 1)  # 1, 260, 64
    with torch.no_grad():
        out = attention(tokens(curr), tokens(curr_pos), memory, memory_pos, num_obj_ptr_tokens=4, feat_hw=(GRID, GRID))
    out = out.transpose(1, 2).reshape(1, -1, GRID, GRID)  # 1, C, h, w
    expected = official["memattn/00/pix_feat_with_mem_obj0"]
    assert (out - expected).abs().max().item() < REL_TOL * expected.std().item()


def test_memory_encoder_matches_official(official, pixel_features):
    """Frame 0's memories (a conditioning frame): the preflight's binarised, non-overlapping masks."""
    encoder = seeded(build_memory_encoder(image_size=IMAGE_SIZE), ENCODER_NAME)
    low_res = official["s4_propagate_fwd/f0/low_res_masks"]  # 3, 1, 64, 64
    num_objects = low_res.shape[0]
    logits = F.interpolate(low_res, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    winner = logits.argmax(0, keepdim=True) == torch.arange(num_objects)[:, None, None, None]
    logits = torch.where(winner, logits, logits.clamp(max=-10.0))
    mask = (logits > 0).float() * 20 - 10
    with torch.no_grad():
        features, pos = encoder(pixel_features[0].expand(num_objects, -1, -1, -1), mask)
    expected = official["s4_propagate_fwd/f0/maskmem_features"].float()
    # Bit-identical with 2 threads; another thread count moves float32 noise across bfloat16 roundings
    # (the recipe: values reported, not gated): a few elements, far below the memories' scale.
    diff = (features.bfloat16().float() - expected).abs()
    assert (diff > 0).float().mean() < 0.05 and diff.max() < 1e-2 * expected.std()
    torch.testing.assert_close(pos, official["maskmem_pos_enc"].expand_as(pos), rtol=0, atol=1e-6)


def test_memory_attention_batches_objects_independently():
    attention = seeded(MemoryAttention(), ATTENTION_NAME)
    gen = torch.Generator().manual_seed(0)
    hw, frames, ptr = 4 * 6, 2, 8
    curr, curr_pos = torch.randn(3, hw, 256, generator=gen), torch.randn(3, hw, 256, generator=gen)
    memory = torch.randn(3, frames * hw + ptr, 64, generator=gen)
    memory_pos = torch.randn(3, frames * hw + ptr, 64, generator=gen)
    with torch.no_grad():
        batched = attention(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=ptr, feat_hw=(4, 6))
        single = [
            attention(
                curr[i : i + 1],
                curr_pos[i : i + 1],
                memory[i : i + 1],
                memory_pos[i : i + 1],
                num_obj_ptr_tokens=ptr,
                feat_hw=(4, 6),
            )
            for i in range(3)
        ]
    torch.testing.assert_close(batched, torch.cat(single), rtol=1e-5, atol=1e-5)


def test_memory_frames_share_the_frame_rope():
    """Two copies of one memory frame attend like the frame alone: each copy's keys get the same RoPE."""
    attention = seeded(MemoryAttention(), ATTENTION_NAME)
    gen = torch.Generator().manual_seed(1)
    hw = 5 * 3
    curr, curr_pos = torch.randn(2, hw, 256, generator=gen), torch.randn(2, hw, 256, generator=gen)
    memory, memory_pos = torch.randn(2, hw, 64, generator=gen), torch.randn(2, hw, 64, generator=gen)
    with torch.no_grad():
        once = attention(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=0, feat_hw=(5, 3))
        twice = attention(
            curr, curr_pos, memory.repeat(1, 2, 1), memory_pos.repeat(1, 2, 1), num_obj_ptr_tokens=0, feat_hw=(5, 3)
        )
    torch.testing.assert_close(twice, once, rtol=1e-5, atol=1e-5)


def test_memory_attention_rejects_a_partial_memory_frame():
    attention = MemoryAttention(num_layers=1)
    x, memory = torch.zeros(1, 16, 256), torch.zeros(1, 20, 64)  # 20 - 2 pointer tokens: not whole 4x4 frames
    with pytest.raises(ValueError, match="whole number"):
        attention(x, x, memory, memory, num_obj_ptr_tokens=2, feat_hw=(4, 4))


def test_memory_encoder_resizes_the_mask_to_interpol_size():
    encoder = build_memory_encoder(image_size=IMAGE_SIZE).eval()
    assert isinstance(encoder, MemoryEncoder)
    assert encoder.mask_downsampler.interpol_size == (256, 256)
    with torch.no_grad():
        features, pos = encoder(torch.randn(2, 256, GRID, GRID), torch.randn(2, 1, 100, 150))
    assert features.shape == pos.shape == (2, 64, GRID, GRID)


def test_modules_instantiate_from_hydra_configs():
    encoder = instantiate(
        {
            "_target_": "sam3.model.memory_encoder.MemoryEncoder",
            "mask_downsampler": {"_target_": "sam3.model.memory_encoder.MaskDownSampler", "interpol_size": [256, 256]},
            "fuser": {"_target_": "sam3.model.memory_encoder.Fuser"},
            "position_encoding": {
                "_target_": "sam3.model.position_encoding.PositionEmbeddingSine",
                "num_pos_feats": 64,
            },
        }
    )
    assert encoder.state_dict().keys() == build_memory_encoder(image_size=IMAGE_SIZE).state_dict().keys()
    assert encoder.mask_downsampler.interpol_size == (256, 256)
    attention = instantiate({"_target_": "sam3.model.memory_attention.MemoryAttention", "feat_sizes": [72, 72]})
    assert attention.state_dict().keys() == MemoryAttention().state_dict().keys()
