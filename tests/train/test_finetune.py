"""Fitting a small GPU: freeze presets of the `optim` group and LoRA adapters (`sam3.train.finetune`,
`sam3.lora`) on the tiny model, run through `build_trainer` as `train.py` runs them: frozen parameters stay
bit-identical and get no optimizer state, a LoRA run resumes exactly and writes its adapters small, bad
patterns raise naming themselves, and the export merges the adapters into the released layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.export import ExportableSam3
from sam3.lora import LoraSpec, apply_lora, load_adapters, lora_spec, merge_lora, merge_lora_state_dict
from sam3.model_builder import build_model, model_config
from sam3.tools.export_weights import export_state_dict, main
from sam3.train.checkpoint import adapters_path, list_checkpoints, read_adapters, save_checkpoint, write_adapters
from sam3.train.entry import build_model as build_model_of_run
from sam3.train.entry import build_trainer, run
from tests.helpers import CONFIG_DIR, killed_at_step, tiny_run_config

RUN = ["data.val=null", "data.num_workers=0", "paths.checkpoint=null"]
VISION = "backbone.vision_backbone."


def _run(cfg):
    trainer = build_trainer(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    return trainer, before


def test_frozen_vision_run_keeps_the_image_encoder_and_gives_it_no_optimizer_state(tmp_path, shapes_root):
    cfg = tiny_run_config(tmp_path / "run", shapes_root, *RUN, "trainer.max_steps=3", "optim=freeze_vision")
    trainer, before = _run(cfg)
    after = trainer.model.state_dict()
    vision = [k for k in before if k.startswith(VISION)]
    assert len(vision) > 20
    for key in vision:
        assert torch.equal(after[key], before[key]), key
    changed = [k for k in before if not k.startswith(VISION) and not torch.equal(after[k], before[k])]
    assert any(k.startswith("transformer.decoder.") for k in changed)
    assert any(k.startswith("backbone.language_backbone.") for k in changed)
    frozen = {id(p) for n, p in trainer.model.named_parameters() if n.startswith(VISION)}
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith(VISION))
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer and not in_optimizer & frozen
    assert not {id(p) for p in trainer.optimizer.state} & frozen
    assert trainer.optimizer.state and {id(p) for p in trainer.optimizer.state} <= in_optimizer


def test_train_decoder_only_freezes_everything_before_the_decoder(tmp_path, shapes_root):
    cfg = tiny_run_config(tmp_path / "run", shapes_root, *RUN, "optim=train_decoder_only")
    model = build_trainer(cfg, torch.device("cpu")).model
    trained = ("transformer.decoder.", "dot_prod_scoring.", "segmentation_head.")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(trained) for n in trainable)
    assert all(any(n.startswith(prefix) for n in trainable) for prefix in trained)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("transformer.encoder."))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+optim.freeze=[backbone.vison_backbone.*]", "optim.freeze: pattern 'backbone.vison_backbone.*' matches no"),
        ("+optim.train_only=[decoder.*]", "optim.train_only: pattern 'decoder.*' matches no"),
        ("+optim.frozen=[x]", "optim: unknown key(s) ['frozen']"),
        ("lora.targets=[transformer.decoder.layers.*.lin1]", "pattern 'transformer.decoder.layers.*.lin1' matches no"),
        (
            "lora.targets=[transformer.encoder.layers.0.self_attn]",
            "'transformer.encoder.layers.0.self_attn' is an nn.Mult",
        ),
        ("lora.targets=[transformer.decoder.layers.0.ca_text.out_proj]", "would never run"),
        ("lora.trainable=[heads.*]", "lora.trainable: pattern 'heads.*' matches no"),
        ("+lora.ranks=4", "lora: unknown key(s) ['ranks']"),
    ],
)
def test_a_bad_pattern_or_key_raises_naming_it(tmp_path, shapes_root, override, named):
    lora = ["lora=vit_decoder"] if override.startswith(("lora", "+lora")) else []
    cfg = tiny_run_config(tmp_path / "run", shapes_root, *RUN, *lora, override)
    with pytest.raises(ValueError, match=re.escape(named)):
        build_trainer(cfg, torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lora_run_trains_adapters_only_and_resumes_to_the_same_weights(tmp_path, shapes_root, monkeypatch):
    overrides = [*RUN, "lora=vit_decoder", "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    reference, before = _run(tiny_run_config(tmp_path / "uninterrupted", shapes_root, *overrides))
    after = reference.model.state_dict()
    trainable = {n for n, p in reference.model.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trainable) and any(".base_layer." in k for k in after)
    for key in after:
        if key not in trainable:
            assert torch.equal(after[key], before[key]), f"frozen {key} changed"
    assert any(not torch.equal(after[k], before[k]) for k in trainable if ".lora_B." in k)

    adapters, config = read_adapters(adapters_path(tmp_path / "uninterrupted", 4))
    assert set(adapters) == trainable and lora_spec(config) == lora_spec(
        OmegaConf.load(CONFIG_DIR / "lora/vit_decoder.yaml")
    )
    checkpoint = list_checkpoints(tmp_path / "uninterrupted")[-1]
    adapter_bytes = adapters_path(tmp_path / "uninterrupted", 4).stat().st_size
    assert adapter_bytes < checkpoint.stat().st_size / 5, (adapter_bytes, checkpoint.stat().st_size)

    crashing_dir = tmp_path / "crashed"
    with killed_at_step(monkeypatch, 4):
        _run(tiny_run_config(crashing_dir, shapes_root, *overrides))
    assert [p.name for p in list_checkpoints(crashing_dir)] == ["step_00000002.pt"]
    resumed, _ = _run(tiny_run_config(crashing_dir, shapes_root, *overrides))
    resumed_state = resumed.model.state_dict()
    assert resumed_state.keys() == after.keys()
    for key in after:
        assert torch.equal(resumed_state[key], after[key]), f"{key} differs after resume"


def _lora_model(spec: LoraSpec, seed: int) -> torch.nn.Module:
    """The tiny image model with adapters whose B is random (a fresh adapter's B is zero, a no-op)."""
    torch.manual_seed(seed)
    model = apply_lora(build_model("tiny"), spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def test_export_merges_the_adapters_into_the_released_layout(tmp_path):
    spec = lora_spec(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "lora/vit_decoder.yaml")))
    model = _lora_model(spec, seed=0)
    checkpoint = tmp_path / "lora.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": OmegaConf.to_container(model_config("tiny"), resolve=True),
            "lora_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(spec).items()},
            "step": 3,
        },
        checkpoint,
    )
    out = tmp_path / "exported.pt"
    main(["--checkpoint", str(checkpoint), "--out", str(out)])
    exported = torch.load(out, weights_only=True)["model"]
    plain_keys = set(export_state_dict(build_model("tiny").state_dict()))
    assert set(exported) == plain_keys and not any("lora" in k or "base_layer" in k for k in exported)

    merged = build_model("tiny", checkpoint=out).eval()
    images = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(1, 400, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ExportableSam3(model)(images, tokens)
        got = ExportableSam3(merged)(images, tokens)
        base = ExportableSam3(build_model("tiny").eval())(images, tokens)
    assert not torch.allclose(base[1], expected[1], atol=1e-3)  # the adapters change the outputs
    for name, a, b in zip(("logits", "boxes", "presence", "masks", "scores"), expected, got, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=f"{name} of the merged export")
    # every loader of weights files (paths.checkpoint=, build_model, predict) reads the checkpoint merged
    direct = build_model("tiny", checkpoint=checkpoint).state_dict()
    assert direct.keys() == merged.state_dict().keys()
    assert all(torch.equal(direct[k], v) for k, v in merged.state_dict().items())


def test_merging_the_saved_state_equals_merging_the_model():
    spec = LoraSpec(rank=4, alpha=8.0, targets=("*.trunk.blocks.0.attn.qkv", "transformer.decoder.layers.*.linear1"))
    model = _lora_model(spec, seed=5)
    from_state = merge_lora_state_dict(model.state_dict(), spec)
    merged = merge_lora(model).state_dict()
    assert from_state.keys() == merged.keys() and not any("lora" in k for k in merged)
    for key, value in merged.items():
        assert torch.equal(from_state[key], value), key


def test_adapters_load_onto_the_base_model(tmp_path: Path):
    spec = LoraSpec(rank=4, targets=("backbone.vision_backbone.trunk.blocks.*.attn.qkv",))
    trained = _lora_model(spec, seed=3)
    adapters = {k: v for k, v in trained.state_dict().items() if ".lora_" in k}
    torch.manual_seed(3)
    fresh = apply_lora(build_model("tiny"), spec)
    load_adapters(fresh, adapters)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(ValueError, match="another lora.rank"):
        load_adapters(apply_lora(build_model("tiny"), LoraSpec(rank=2, targets=spec.targets)), adapters)


def _two_rank_frozen_lora_run(run_dir, shapes_root):
    cfg = tiny_run_config(
        run_dir, shapes_root, *RUN, "trainer.max_steps=2", "optim=freeze_vision_text", "lora=vit_decoder"
    )
    return run(cfg)["step"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rank_frame_sharded_run_with_frozen_encoders_and_lora(tmp_path, shapes_root):
    """Both ranks share each clip's frames (frame group of 2): the frame gathers and DDP's all-reduce run
    with the encoders frozen and only adapters and heads trainable."""
    assert run_on_local_ranks(_two_rank_frozen_lora_run, 2, tmp_path / "ddp", shapes_root, timeout_s=500) == [2, 2]
    cfg = tiny_run_config(tmp_path / "fresh", shapes_root, *RUN, "optim=freeze_vision_text", "lora=vit_decoder")
    initial = build_model_of_run(cfg, torch.device("cpu"))
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}
    saved = torch.load(list_checkpoints(tmp_path / "ddp")[-1], weights_only=True)["model"]
    for key, value in initial.state_dict().items():
        if key not in trainable:
            assert torch.equal(saved[key], value), f"frozen {key} changed"
    assert any(not torch.equal(saved[k], initial.state_dict()[k]) for k in trainable)


def test_adapter_files_follow_checkpoint_retention(tmp_path):
    config = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["*.qkv"], "trainable": []}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.zeros(1)}}, keep_last=2)
        write_adapters(tmp_path, step, {"x.lora_A.default.weight": torch.full((2, 2), float(step))}, config)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    adapters, stored = read_adapters(adapters_path(tmp_path, 3))
    assert stored == config and torch.equal(adapters["x.lora_A.default.weight"], torch.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="not an adapters file"):
        read_adapters(list_checkpoints(tmp_path)[-1])
