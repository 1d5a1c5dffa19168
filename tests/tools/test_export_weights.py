"""`python -m sam3.tools.export_weights`: a fine-tune back in the released `sam3.pt` layout.

Fast: the tiny model round trip (the file is in the official layout, holds exactly our model's keys
under released names, and our loader reads it back bit for bit), `--base` filling the parts a model
built with `tracker=null` lacks, the errors, and the full-size key set against the released manifest
on the meta device. Slow: a seeded full-size model exported and loaded by Meta's own builders (the
video model, strictly, and the image model, whose FIXED_INPUT_V1 outputs must match ours).
"""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sam3.tools._meta_export_oracle as oracle_module
from sam3.checkpoint import load_sam3_weights, map_checkpoint_keys
from sam3.model_builder import apply_runtime_policy, build_model, model_config
from sam3.tools.export_weights import export_model, export_state_dict, main, released_name, save_released
from sam3.tools.reference_forward import reference_forward
from sam3.tools.seeded_init import read_manifest, seeded_tensor
from tests.helpers import REFERENCE_DIR, official_reference_script, oracle_python, require_heavy_oracle

LAYOUT = REFERENCE_DIR / "sam3_checkpoint_layout_state_dict.tsv"
NO_TRACKER = ["tracker=null", "backbone.vision_backbone.use_sam2_convs=false"]
REL_TOL = 1e-4


def training_checkpoint(path: Path, overrides: list[str], seed: int) -> dict[str, torch.Tensor]:
    """A tiny training checkpoint (state dict + resolved model config) with random weights."""
    cfg = model_config("tiny", overrides)
    model = instantiate(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    state = model.state_dict()
    torch.save({"model": state, "model_config": OmegaConf.to_container(cfg, resolve=True), "step": 3}, path)
    return state


def export(checkpoint: Path, out: Path, base: Path | None = None) -> None:
    main(["--checkpoint", str(checkpoint), "--out", str(out), *([] if base is None else ["--base", str(base)])])


def read_released(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, weights_only=True)
    assert list(obj) == ["model"]
    return obj["model"]


def test_tiny_round_trip_in_the_released_layout(tmp_path):
    state = training_checkpoint(tmp_path / "ft.pt", [], seed=0)
    export(tmp_path / "ft.pt", tmp_path / "exported.pt")
    exported = read_released(tmp_path / "exported.pt")

    assert list(exported) == [released_name(k) for k in state]
    assert all(k.startswith(("detector.", "tracker.")) for k in exported)
    assert any(k.startswith("detector.backbone.vision_backbone.sam2_convs.") for k in exported)
    assert any(k.startswith("tracker.") for k in exported)
    assert not any(k.startswith("detector.tracker.") for k in exported)
    assert {v.dtype for v in exported.values()} == {torch.float32, torch.complex64}
    assert map_checkpoint_keys(exported).layout == "official"
    for key, tensor in state.items():
        assert torch.equal(exported[released_name(key)], tensor), key

    fresh = build_model("tiny")
    report = load_sam3_weights(fresh, tmp_path / "exported.pt")
    assert report.layout == "official" and not report.problems and report.known_unused == []
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def test_base_supplies_what_a_model_without_tracker_lacks(tmp_path):
    base_state = training_checkpoint(tmp_path / "full.pt", [], seed=1)
    export(tmp_path / "full.pt", tmp_path / "base.pt")
    base = read_released(tmp_path / "base.pt")
    ft_state = training_checkpoint(tmp_path / "ft.pt", NO_TRACKER, seed=2)

    with pytest.raises(ValueError, match=r"tracker\.\*.*sam2_convs\.\*.*--base"):
        export(tmp_path / "ft.pt", tmp_path / "nope.pt")
    assert not (tmp_path / "nope.pt").exists()

    export(tmp_path / "ft.pt", tmp_path / "out.pt", base=tmp_path / "base.pt")
    exported = read_released(tmp_path / "out.pt")
    assert list(exported) == list(base)  # exactly the base's layout, in its order
    for key, tensor in exported.items():
        model_key = key.removeprefix("detector.")
        want = ft_state[model_key] if model_key in ft_state else base_state[model_key]
        assert torch.equal(tensor, want), key
    assert sum(k.startswith("tracker.") for k in exported) == sum(k.startswith("tracker.") for k in base_state)

    # the result loads into a model with the tracker: fine-tuned detector, base tracker
    fresh = build_model("tiny")
    assert not load_sam3_weights(fresh, tmp_path / "out.pt").problems


def test_base_of_another_architecture_is_refused(tmp_path):
    training_checkpoint(tmp_path / "ft.pt", [], seed=0)
    training_checkpoint(tmp_path / "wide.pt", ["decoder.num_queries=7"], seed=0)
    export(tmp_path / "wide.pt", tmp_path / "wide_released.pt")
    with pytest.raises(ValueError, match="differ in shape from --base"):
        export(tmp_path / "ft.pt", tmp_path / "x.pt", base=tmp_path / "wide_released.pt")
    with pytest.raises(ValueError, match="not in the released layout"):
        export(tmp_path / "ft.pt", tmp_path / "x.pt", base=tmp_path / "ft.pt")


def manifest_state() -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, s, d in read_manifest(LAYOUT)}


def as_layout(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


def test_full_size_export_has_exactly_the_released_keys():
    layout = read_manifest(LAYOUT)
    assert len(layout) == 1465
    with torch.device("meta"):
        model = instantiate(model_config("sam3"))
    exported = export_state_dict(model.state_dict())
    assert sorted(as_layout(exported)) == sorted(layout)  # RoPE tables included, as released

    with torch.device("meta"):
        image_only = instantiate(model_config("sam3", NO_TRACKER))
    with pytest.raises(ValueError, match="tracker"):
        export_state_dict(image_only.state_dict())
    assert as_layout(export_state_dict(image_only.state_dict(), base=manifest_state())) == layout


# ------------------------------------------------------------------------------------------- slow: Meta
def seeded_full_model(seed: int):
    """The `sam3` preset with its tracker, every float tensor SEEDED_INIT_V1: image-model keys by their
    own names (the image recipe), the tracker and `sam2_convs` by released names (the tracker recipes)."""
    model = apply_runtime_policy(build_model("sam3"), eval_mode=True)
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_complex():
                by_released_name = key.startswith(("tracker.", "backbone.vision_backbone.sam2_convs."))
                name = released_name(key) if by_released_name else key
                tensor.copy_(seeded_tensor(name, tensor.shape, seed))
    return model


@pytest.mark.slow
def test_meta_builders_load_an_exported_fine_tune(tmp_path):
    require_heavy_oracle()
    python, script = oracle_python("import sam3.model_builder, open_clip"), official_reference_script()
    timing = {}
    start = time.time()
    model = seeded_full_model(seed=1)  # not the seed of the stored outputs: nothing here is precomputed
    timing["ours_build_seed_s"] = time.time() - start
    ckpt = tmp_path / "sam3_finetuned.pt"
    start = time.time()
    save_released(export_model(model), ckpt)
    timing["export_s"] = time.time() - start
    start = time.time()
    ours, _ = reference_forward(model)
    timing["ours_forward_s"] = time.time() - start
    del model
    gc.collect()
    ours_peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    oracle = {}
    # glibc returns freed memory of allocations over 1 MB at once: without this, the heap kept after
    # Meta's loader (model + whole file in memory) lifts the oracle's peak from 7 to 10 GB
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    for mode in ("video", "image"):
        start = time.time()
        out = tmp_path / f"official_{mode}.pt"
        done = subprocess.run(
            [python, "-I", oracle_module.__file__, "--reference-script", str(script), str(ckpt), str(out)]
            + (["--video"] if mode == "video" else []),
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        timing[f"oracle_{mode}_s"] = time.time() - start
        oracle[mode] = torch.load(out, weights_only=True)
    # Meta's video builder loads strictly: no key missing or unexpected, every shape right
    assert oracle["video"]["video_loaded"] and oracle["video"]["n_keys"] == 1465
    official = oracle["image"]
    assert official["missing"] == [] and official["not_equal"] == []

    ref = official["tensors"]
    assert sorted(ours) == sorted(ref)
    report, failures = {}, []
    for key, want in ref.items():
        got = ours[key]
        assert got.shape == want.shape, key
        if key.endswith("pred_masks_top2_idx"):
            continue  # near-tied logits may order two queries either way
        if not want.is_floating_point():
            assert torch.equal(got, want), key
            continue
        by_rms = key.endswith("pred_logits") or want.numel() == 1  # as tests/model/test_reference_parity.py
        scale = (want.pow(2).mean().sqrt() if by_rms else want.std()).item()
        report[key] = (got - want).abs().max().item() / scale
        if report[key] > REL_TOL:
            failures.append(f"{key}: {report[key]:.2e}")
    worst = max(report, key=report.get)
    print(f"\ntimes {timing}; oracle {oracle['video']['timing']} {official['timing']} ({official['threads']} threads)")
    video_gb, image_gb = oracle["video"]["peak_rss_gb"], official["peak_rss_gb"]
    print(f"peak RSS GB: ours {ours_peak_gb:.1f}, Meta video {video_gb:.1f}, Meta image {image_gb:.1f}")
    print(f"max |ours - Meta(exported)| / scale over {len(report)} tensors: {report[worst]:.2e} ({worst})")
    assert failures == []
    assert max(ours_peak_gb, video_gb, image_gb) < 10
