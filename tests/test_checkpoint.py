"""The weights loader: key mapping of the released layout, every accepted layout on the tiny
backbone, and refusal of missing, unexpected, mis-shaped keys and wrong RoPE tables."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra.utils import instantiate

from sam3.checkpoint import load_sam3_weights, load_state_dict, map_checkpoint_keys
from sam3.model_builder import build_model, model_config
from sam3.tools.seeded_init import read_manifest


def build_tiny(seed: int):
    torch.manual_seed(seed)
    return instantiate(model_config("tiny").backbone).eval()


@pytest.fixture(scope="module")
def source():
    return build_tiny(seed=1)


@pytest.fixture
def target():
    return build_tiny(seed=2)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_released_layout_maps_onto_the_image_model(reference_dir):
    layout_keys = [k for k, _, _ in read_manifest(reference_dir / "sam3_checkpoint_layout_state_dict.tsv")]
    image_keys = [k for k, _, _ in read_manifest(reference_dir / "sam3_image_state_dict.tsv")]
    mapping = map_checkpoint_keys(layout_keys)
    assert mapping.layout == "official"
    assert sorted(mapping.renamed.values()) == sorted(image_keys)
    assert all(file_key == "detector." + key for file_key, key in mapping.renamed.items())
    optional = mapping.optional
    assert sum(k.startswith("detector.backbone.vision_backbone.sam2_convs.") for k in optional) == 22
    assert sum(k.startswith("tracker.") for k in optional) == 309
    assert len(optional) == 331
    assert all(v == k.removeprefix("detector.") for k, v in optional.items())


def test_released_layout_fits_the_full_backbone_shape_by_shape(reference_dir):
    with torch.device("meta"):
        backbone = instantiate(model_config("sam3").backbone)
    layout = read_manifest(reference_dir / "sam3_checkpoint_layout_state_dict.tsv")
    # Meta tensors carry shapes only; the RoPE tables' values are checked in the tiny tests.
    state = {
        key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for key, shape, dtype in layout
        if not key.endswith("freqs_cis")
    }
    report = load_state_dict(backbone, state, prefix="backbone.", wrapped=True)
    assert report.layout == "official" and not report.problems
    assert len(report.loaded) == len(backbone.state_dict()) - 32  # all but the 32 RoPE tables
    assert sum(k.startswith("vision_backbone.sam2_convs.") for k in report.loaded) == 22
    assert len(report.known_unused) == 309 and all(k.startswith("tracker.") for k in report.known_unused)
    assert all(not k.startswith("backbone.") for k in report.outside_prefix)


def test_released_layout_fits_the_full_model_with_tracker(reference_dir):
    with torch.device("meta"):
        model = instantiate(model_config("sam3"))
    layout = read_manifest(reference_dir / "sam3_checkpoint_layout_state_dict.tsv")
    state = {
        key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for key, shape, dtype in layout
        if not key.endswith("freqs_cis")
    }
    report = load_state_dict(model, state, wrapped=True)
    assert len(layout) == 1465
    assert report.layout == "official" and not report.problems
    assert len(report.loaded) == len(model.state_dict()) - 32  # all but the 32 RoPE tables
    tracker_loaded = [k for k in report.loaded if k.startswith("tracker.")]
    assert len(tracker_loaded) == 309 == len(model.tracker.state_dict())
    assert sum(k.startswith("backbone.vision_backbone.sam2_convs.") for k in report.loaded) == 22
    # The released checkpoint is used whole: interactive heads and memory tracker alike.
    assert report.known_unused == [] and report.outside_prefix == []


def test_ddp_and_bare_layouts_are_recognised():
    mapping = map_checkpoint_keys(["module.a.weight", "module.b"])
    assert mapping.layout == "ddp"
    assert mapping.renamed == {"module.a.weight": "a.weight", "module.b": "b"}
    assert map_checkpoint_keys(["module.a", "b"]).layout == "bare"


def test_bare_round_trip(source, target, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(source.state_dict(), path)
    report = load_sam3_weights(target, path)
    assert report.layout == "bare" and not report.problems
    assert_same_weights(source, target)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(
            source.forward_image(images)["backbone_fpn"], target.forward_image(images)["backbone_fpn"], strict=True
        ):
            assert torch.equal(a, b)


def test_training_checkpoint_and_ddp_prefix(source, target, tmp_path):
    path = tmp_path / "train.pt"
    ddp_state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": ddp_state, "optimizer": {"state": {}, "param_groups": []}, "step": 7}, path)
    report = load_sam3_weights(target, path)
    assert report.layout == "ddp"
    assert_same_weights(source, target)


def test_official_layout_reports_unused_keys(source, target, tmp_path, caplog):
    state = {f"detector.backbone.{k}": v for k, v in source.state_dict().items()}
    state["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)
    state["detector.geometry_encoder.norm.weight"] = torch.ones(64)  # another part of the full model
    path = tmp_path / "sam3.pt"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.INFO, logger="sam3.checkpoint"):
        report = load_sam3_weights(target, path, prefix="backbone.")
    assert report.layout == "official"
    assert report.known_unused == ["tracker.maskmem_tpos_enc"]
    assert report.outside_prefix == ["geometry_encoder.norm.weight"]
    assert "(1 tracker.*)" in caplog.text
    assert_same_weights(source, target)


def test_mis_shaped_key_raises_and_non_strict_loads_the_rest(source, target):
    state = dict(source.state_dict())
    state["language_backbone.resizer.weight"] = torch.zeros(3, 3)
    expected = r"1 mis-shaped: language_backbone.resizer.weight: file \(3, 3\) vs model \(64, 64\)"
    with pytest.raises(ValueError, match=expected):
        load_state_dict(target, state)
    before = target.language_backbone.resizer.weight.clone()
    report = load_state_dict(target, state, strict=False)
    assert torch.equal(target.language_backbone.resizer.weight, before)
    assert torch.equal(target.vision_backbone.trunk.pos_embed, source.vision_backbone.trunk.pos_embed)
    assert "language_backbone.resizer.weight" not in report.loaded


def test_missing_and_unexpected_keys_raise(source, target):
    state = dict(source.state_dict())
    del state["vision_backbone.convs.0.conv_3x3.bias"]
    state["vision_backbone.extra.weight"] = torch.zeros(1)
    expected = "1 missing: vision_backbone.convs.0.conv_3x3.bias; 1 unexpected: vision_backbone.extra.weight"
    with pytest.raises(ValueError, match=expected):
        load_state_dict(target, state)


def test_rope_tables_are_checked_not_ignored(source, target):
    state = dict(source.state_dict())
    key = "vision_backbone.trunk.blocks.1.attn.freqs_cis"
    state[key] = state[key] * torch.polar(torch.ones(()), torch.tensor(0.01))
    with pytest.raises(ValueError, match=f"RoPE table differs from recomputed: {key}"):
        load_state_dict(target, state)
    # A file without RoPE tables is complete: the model computes them.
    no_rope = {k: v for k, v in source.state_dict().items() if not k.endswith("freqs_cis")}
    assert not load_state_dict(target, no_rope).problems


def test_non_state_dict_file_is_rejected(target, tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(ValueError, match="is not a state dict"):
        load_sam3_weights(target, path)


def test_builder_loads_the_backbone_part_of_a_full_model_checkpoint(source, tmp_path):
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["encoder.layers.0.norm1.weight"] = torch.ones(64)  # the grounding head's weights
    path = tmp_path / "full.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "step": 3}, path)
    cfg = model_config("tiny", [f"+backbone.checkpoint_path={path}"])
    assert_same_weights(source, instantiate(cfg.backbone))


def test_our_weights_with_interactive_heads_load_into_a_model_without_them():
    torch.manual_seed(0)
    with_heads = build_model("tiny")
    without = build_model("tiny", overrides=["tracker=null", "backbone.vision_backbone.use_sam2_convs=false"])
    state = with_heads.state_dict()
    report = load_state_dict(without, state)
    optional = [k for k in state if k.startswith(("tracker.", "backbone.vision_backbone.sam2_convs."))]
    assert optional and sorted(report.known_unused) == sorted(optional)
    assert all(torch.equal(v, state[k]) for k, v in without.state_dict().items() if not k.endswith("freqs_cis"))
