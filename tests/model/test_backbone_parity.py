"""Our backbone against Meta's official SAM3: the full preset's keys and shapes against the
manifest (meta device, no memory), and outputs on SEEDED_INIT_V1 weights and FIXED_INPUT_V1.

The reference tensors (`tests/assets/reference/sam3_image_seeded_outputs.pt`) were produced by the
official package; see `../shared/tools/official_reference.py` for how each one is pooled or cropped.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from sam3.model.position_encoding import PositionEmbeddingSine
from sam3.model_builder import model_config
from sam3.tools.seeded_init import fixed_input, read_manifest, seeded_tensor

PROMPT = "dog"
REL_TOL = 1e-4  # max |ours - official| <= REL_TOL * std(official), per tensor


def test_full_preset_matches_the_manifest_key_by_key(reference_dir):
    with torch.device("meta"):
        backbone = instantiate(model_config("sam3").backbone)
    # The released layout: the image model's backbone plus the second pyramid (`sam2_convs`).
    manifest = {
        key.removeprefix("detector.backbone."): (shape, dtype)
        for key, shape, dtype in read_manifest(reference_dir / "sam3_checkpoint_layout_state_dict.tsv")
        if key.startswith("detector.backbone.")
    }
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in backbone.state_dict().items()}
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert {k: v for k, v in ours.items() if manifest[k] != v} == {}
    sam2_convs = sum(p.numel() for p in backbone.vision_backbone.sam2_convs.parameters())
    assert sam2_convs == sum(p.numel() for p in backbone.vision_backbone.convs.parameters())
    assert sum(p.numel() for p in backbone.parameters()) - sam2_convs == 807_764_480


@pytest.mark.parametrize("level", [0, 1, 2])
def test_sine_position_encoding_matches_official_statistics(reference_dir, level):
    stats = torch.load(reference_dir / "sam3_image_seeded_outputs.pt", weights_only=True)["stats"][f"vision/pos{level}"]
    pos = PositionEmbeddingSine(256)(torch.zeros(stats["shape"])).double()
    assert list(pos.shape) == stats["shape"]
    for name, value in (("mean", pos.mean()), ("std", pos.std()), ("min", pos.min()), ("max", pos.max())):
        assert abs(value.item() - stats[name]) < 1e-6, name


def _pool(t: torch.Tensor, size: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(t, size)


@pytest.mark.slow
def test_full_size_backbone_matches_official(reference_dir):
    reference = torch.load(reference_dir / "sam3_image_seeded_outputs.pt", weights_only=True)["tensors"]
    backbone = instantiate(model_config("sam3").backbone).eval()
    with torch.no_grad():  # SEEDED_INIT_V1, key by key, in place (no second copy of 3 GB)
        for key, tensor in backbone.state_dict(keep_vars=True).items():
            if not tensor.is_complex():
                tensor.copy_(seeded_tensor(f"backbone.{key}", tensor.shape, seed=0))
    trunk_out = {}
    hook = backbone.vision_backbone.trunk.register_forward_hook(lambda _m, _i, out: trunk_out.update(x=out))
    with torch.no_grad():
        image = backbone.forward_image(fixed_input())
        text = backbone.forward_text([PROMPT])
    hook.remove()
    assert torch.equal(backbone.language_backbone.tokenizer([PROMPT]), reference["text/token_ids"])
    assert torch.equal(text["language_mask"], reference["text/language_mask"])
    ours = {
        "text/language_features": text["language_features"],
        "text/language_embeds": text["language_embeds"],
        "vision/trunk_out_pool9": _pool(trunk_out["x"], 9),
        "vision/trunk_out_crop": trunk_out["x"][0, :16, :8, :8],
    }
    for i, level in enumerate(image["backbone_fpn"]):
        ours[f"vision/fpn{i}_pool18"] = _pool(level, 18)
        ours[f"vision/fpn{i}_crop"] = level[0, :16, :16, :16]
    failures = []
    for name, value in ours.items():
        ref = reference[name]
        assert value.shape == ref.shape, f"{name}: shape {tuple(value.shape)} vs {tuple(ref.shape)}"
        err = (value - ref).abs().max().item()
        bound = REL_TOL * ref.std().item()
        if not err <= bound:
            failures.append(f"{name}: max error {err:.3e} > {bound:.3e}")
    assert not failures, "; ".join(failures)
