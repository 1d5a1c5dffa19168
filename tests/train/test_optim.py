"""Optimizer rules and LR schedules against SAM3's released fine-tune: the schedule against Meta's
`InverseSquareRootParamScheduler` (hand-computed values, and Meta's class itself when its virtualenv is
present), every parameter's LR and weight decay of the full preset against Meta's rules applied by name,
the errors of bad rules, and the LR the trainer sets at each step."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from sam3.model_builder import config_dir, model_config
from sam3.train.entry import build_trainer
from sam3.train.optim import (
    OptimConfig,
    ScheduleConfig,
    build_optim_config,
    build_schedule_config,
    lr_factor,
    param_groups,
)
from tests.helpers import tiny_run_config

# Meta's sam3==0.1.4 installed in a virtualenv, read only to compare numbers.
REFERENCE_VENV = Path(os.environ.get("SAM3_REFERENCE_VENV", "/tmp/refvenv"))

# SAM3's released fine-tune (roboflow_v100_full_ft_100_images.yaml), as Meta states it.
SAM3_LR = {"backbone.vision_backbone.": 2.5e-5, "backbone.language_backbone.": 5e-6}
SAM3_LR_REST = 8e-5
SAM3_LAYER_DECAY = 0.9
SAM3_TRUNK = "backbone.vision_backbone.trunk"
SAM3_WEIGHT_DECAY = 0.1


def _experiment(name: str, *overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=["paths.checkpoint=unused", "paths.dataset_root=unused", *overrides])


def _meta_model(preset: str) -> nn.Module:
    # Meta's image fine-tune has no interactive heads; training keeps ours frozen (trainer.frozen_params).
    without_interactive = ["tracker=null", "backbone.vision_backbone.use_sam2_convs=false"]
    with torch.device("meta"):
        return instantiate(model_config(preset, without_interactive))


@pytest.fixture(scope="module")
def full_model() -> nn.Module:
    return _meta_model("sam3")


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    return _meta_model("tiny")


# ------------------------------------------------------------------------------------------ schedule
def _meta_scheduler_class():
    found = sorted(REFERENCE_VENV.glob("lib/python3*/site-packages/sam3/train/optim/schedulers.py"))
    if not found:
        pytest.skip(f"Meta's sam3 is not installed in {REFERENCE_VENV} (set SAM3_REFERENCE_VENV to its virtualenv)")
    spec = importlib.util.spec_from_file_location("meta_sam3_schedulers", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only `math`
    return module.InverseSquareRootParamScheduler


def test_roboflow_schedule_is_sam3s():
    schedule = instantiate(_experiment("roboflow_video_ft").optim.schedule, _convert_="all")
    sam3 = ScheduleConfig(total_steps=5000, kind="inverse_sqrt", warmup_steps=20, cooldown_steps=20, timescale=20)
    assert schedule == sam3


def test_inverse_sqrt_matches_hand_computed_values_of_metas_formula():
    # Meta: lr = base * min(1, s/W) / sqrt((s + timescale - W) / timescale) [only once s > W] * min(1, (N - s)/C)
    schedule = ScheduleConfig(total_steps=100, kind="inverse_sqrt", warmup_steps=20, cooldown_steps=20, timescale=20)
    expected = {
        0: 0.0,  # step 0 trains with LR 0
        10: 0.5,
        20: 1.0,
        21: 1 / math.sqrt(21 / 20),
        40: 1 / math.sqrt(2),
        80: 0.5,  # cooldown starts after this step
        90: 0.5 / math.sqrt(4.5),
        99: (1 / 20) / math.sqrt(99 / 20),  # the last step of the run
        100: 0.0,
        150: 0.0,  # past the end: clamped, never negative
    }
    for step, value in expected.items():
        assert lr_factor(step, schedule) == pytest.approx(value, rel=1e-12, abs=1e-15), step


@pytest.mark.parametrize(
    ("total", "warmup", "cooldown", "timescale"),
    [(5000, 20, 20, 20), (100, 20, 20, 20), (60, 20, 20, 20), (300, 7, 50, 3), (100, 10, 0, 20), (90, 1, 1, 1)],
)
def test_inverse_sqrt_equals_metas_scheduler_at_every_step(total, warmup, cooldown, timescale):
    meta = _meta_scheduler_class()(base_lr=1.0, warmup_steps=warmup, cooldown_steps=cooldown, timescale=timescale)
    ours = ScheduleConfig(
        total_steps=total, kind="inverse_sqrt", warmup_steps=warmup, cooldown_steps=cooldown, timescale=timescale
    )
    # Meta's trainer calls it with the step and where = step / total, for every step of the run.
    for step in range(total):
        assert lr_factor(step, ours) == pytest.approx(meta(step=step, where=step / total), rel=1e-12, abs=1e-15), step


def test_cosine_and_constant_stay_available():
    cosine = ScheduleConfig(total_steps=110, kind="cosine", warmup_steps=10, cooldown_steps=0, warmup_start_factor=0.01)
    assert lr_factor(0, cosine) == pytest.approx(0.01)
    assert lr_factor(10, cosine) == pytest.approx(1.0)
    assert lr_factor(60, cosine) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(110, cosine) == pytest.approx(0.01)
    constant = ScheduleConfig(total_steps=100, kind="constant", warmup_steps=0, cooldown_steps=10)
    assert [lr_factor(s, constant) for s in (0, 90, 95)] == pytest.approx([1.0, 1.0, 0.5])


def test_demo_schedule_is_warmup_then_cosine():
    schedule = instantiate(_experiment("demo_shapes_video").optim.schedule, _convert_="all")
    assert (schedule.kind, schedule.warmup_steps, schedule.cooldown_steps) == ("cosine", 50, 0)
    assert lr_factor(0, schedule) == pytest.approx(0.01)


def test_bad_schedule_is_rejected_with_the_valid_values():
    with pytest.raises(ValueError, match=r"optim.schedule.kind='cosin'.*inverse_sqrt, cosine, constant"):
        ScheduleConfig(total_steps=10, kind="cosin")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['warmup'\].*valid keys.*warmup_steps"):
        build_schedule_config(total_steps=10, warmup=5)
    with pytest.raises(ValueError, match=r"optim.schedule.cooldown_steps=-1"):
        ScheduleConfig(total_steps=10, cooldown_steps=-1)


# ------------------------------------------------------------------------------- parameter groups
def _meta_layer_id(name: str, num_blocks: int) -> int:
    """The layer id SAM3's ViT gives a parameter (BEiT's rule), from its full name."""
    if "rel_pos" in name:
        return num_blocks + 1
    if "ln_pre" in name or "pos_embed" in name or "cls_token" in name or "patch_embed" in name:
        return 0
    if "blocks" in name:
        return int(name.partition("blocks.")[2].split(".")[0]) + 1
    return num_blocks + 1


def _sam3_expected(model: nn.Module) -> dict[str, tuple[float, float]]:
    """name -> (LR, weight decay) as Meta's released rules assign them, computed from names and modules only."""
    num_blocks = len(model.get_submodule(SAM3_TRUNK).blocks)
    layer_norm_params = {
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if type(module) is nn.LayerNorm
        for param_name, _ in module.named_parameters(recurse=False)
    }
    expected = {}
    for name, _ in model.named_parameters():
        lr = next((lr for prefix, lr in SAM3_LR.items() if fnmatch.fnmatchcase(name, prefix + "*")), SAM3_LR_REST)
        if name.startswith(SAM3_TRUNK):
            if fnmatch.fnmatchcase(name, "*pos_embed*"):
                scale = 1.0
            else:
                scale = SAM3_LAYER_DECAY ** (num_blocks + 1 - _meta_layer_id(name, num_blocks))
            lr *= scale
        decay = 0.0 if "bias" in name or name in layer_norm_params else SAM3_WEIGHT_DECAY
        expected[name] = (lr, decay)
    return expected


def _assigned(model: nn.Module, groups: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """name -> [(LR, weight decay)] of every group holding the parameter."""
    names = {id(p): n for n, p in model.named_parameters()}
    assigned: dict[str, list[tuple[float, float]]] = {}
    for group in groups:
        for param in group["params"]:
            assigned.setdefault(names[id(param)], []).append((group["lr"], group["weight_decay"]))
    return assigned


def test_roboflow_optimizer_config_is_sam3s():
    config = instantiate(_experiment("roboflow_video_ft").optim.optimizer, _convert_="all")
    assert config == OptimConfig()


def test_full_preset_gets_sam3s_lr_and_weight_decay_for_every_parameter(full_model):
    config = instantiate(_experiment("roboflow_video_ft").optim.optimizer, _convert_="all")
    groups = param_groups(full_model, config)
    assigned = _assigned(full_model, groups)
    expected = _sam3_expected(full_model)

    assert len(expected) == 1102
    assert sorted(assigned) == sorted(expected), "every parameter is in a group"
    assert {n: len(v) for n, v in assigned.items() if len(v) != 1} == {}, "no parameter is in two groups"
    wrong = {
        name: {"ours": assigned[name][0], "sam3": want}
        for name, want in expected.items()
        if not (math.isclose(assigned[name][0][0], want[0], rel_tol=1e-12) and assigned[name][0][1] == want[1])
    }
    assert wrong == {}
    # The numbers behind it: 546 biases and 172 LayerNorm weights undecayed, the other 384 parameters decayed;
    # LRs: the 3 base LRs (neck and pos_embed at the vision one), the stem's 2.5e-5 * 0.9**33 and 32 block LRs.
    assert sum(wd == 0.0 for _, wd in expected.values()) == 546 + 172
    lrs = {lr for lr, _ in expected.values()}
    assert len(lrs) == 3 + 1 + 32 and min(lrs) == pytest.approx(2.5e-5 * 0.9**33)
    trunk = {n: v for n, v in expected.items() if n.startswith(SAM3_TRUNK)}
    assert trunk[f"{SAM3_TRUNK}.pos_embed"] == (2.5e-5, 0.1)
    assert trunk[f"{SAM3_TRUNK}.patch_embed.proj.weight"] == pytest.approx((2.5e-5 * 0.9**33, 0.1))
    assert trunk[f"{SAM3_TRUNK}.blocks.31.norm1.weight"] == pytest.approx((2.5e-5 * 0.9, 0.0))
    assert expected["segmentation_head.pixel_decoder.norms.0.weight"] == (8e-5, 0.1)  # GroupNorm: decayed
    assert expected["backbone.language_backbone.encoder.positional_embedding"] == (5e-6, 0.1)
    assert expected["transformer.decoder.layers.0.self_attn.in_proj_bias"] == (8e-5, 0.0)


def test_frozen_parameters_are_left_out_and_the_rules_stay_valid(tiny_model):
    vision = [p for n, p in tiny_model.named_parameters() if n.startswith("backbone.vision_backbone.")]
    for param in vision:
        param.requires_grad_(False)
    try:
        groups = param_groups(tiny_model, OptimConfig())
    finally:
        for param in vision:
            param.requires_grad_(True)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in tiny_model.parameters() if id(p) not in {id(v) for v in vision}]
    assert sorted(grouped) == sorted(trainable)
    assert not any(g["name"].startswith("vision") for g in groups)


def test_demo_rules_give_one_lr_to_every_parameter(tiny_model):
    config = instantiate(_experiment("demo_shapes_video").optim.optimizer, _convert_="all")
    groups = param_groups(tiny_model, config)
    assert {g["lr"] for g in groups} == {5e-4}
    assigned = _assigned(tiny_model, groups)
    assert len(assigned) == len(list(tiny_model.parameters())) and all(len(v) == 1 for v in assigned.values())
    assert len({g["name"] for g in groups}) == len(groups)
    # from scratch: no decay on any 1-D parameter nor the position embeddings
    undecayed = {n for n, v in assigned.items() if v[0][1] == 0.0}
    params = dict(tiny_model.named_parameters())
    embeddings = ("pos_embed", "positional_embedding")
    assert undecayed == {n for n, p in params.items() if p.ndim < 2 or n.endswith(embeddings)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr_rest": 1e-3}, r"optim.optimizer: unknown key\(s\) \['lr_rest'\]; valid keys: \['lr', 'lr_groups'"),
        ({"layer_decay": {"valu": 0.9}}, r"optim.optimizer.layer_decay: unknown key\(s\) \['valu'\]"),
        ({"no_weight_decay": {"names": ["*bias*"], "modules": []}}, r"no_weight_decay: unknown key\(s\) \['modules'\]"),
        ({"lr_groups": {"vision": {"params": ["re:a.(["], "lr": 1e-4}}}, r"'re:a.\(\[' is not a valid regular"),
        ({"lr_groups": {"vision": {"params": "backbone.*", "lr": 1e-4}}}, r"lr_groups.vision.params='backbone.\*'"),
        ({"lr_groups": {"vision": {"params": ["backbone.*"]}}}, r"lr_groups.vision: missing key\(s\) \['lr'\]"),
        ({"lr_groups": {"rest": {"params": ["x*"], "lr": 1e-4}}}, r"'rest' names the parameters no group claims"),
        ({"layer_decay": {"value": 0.0}}, r"layer_decay.value=0.0: expected a number in \(0, 1\]"),
        ({"no_weight_decay": {"module_types": ["torch.nn.LayerNrom"]}}, r"'torch.nn.LayerNrom' is not an importable"),
    ],
)
def test_bad_rules_are_rejected_when_the_config_is_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_optim_config(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"no_weight_decay": {"names": ["*bais*"]}}, r"no_weight_decay.names: pattern '\*bais\*' matches no parameter"),
        (
            {
                "lr_groups": {
                    "vision": {"params": ["backbone.*"], "lr": 1e-4},
                    "text": {"params": ["*lang*"], "lr": 1e-5},
                }
            },
            r"parameter 'backbone.language_backbone.* matches both 'vision' .* and 'text'",
        ),
        ({"layer_decay": {"apply_to": "backbone.trunk"}}, r"layer_decay.apply_to='backbone.trunk' holds no parameter"),
        ({"layer_decay": {"overrides": {"*pos_emb": 1.0}}}, r"overrides: pattern '\*pos_emb' matches no parameter"),
        (
            {"no_weight_decay": {"module_types": ["torch.nn.BatchNorm2d"]}},
            r"exactly class 'torch.nn.BatchNorm2d'.*torch.nn.modules.normalization.GroupNorm",
        ),
    ],
)
def test_rules_that_do_not_fit_the_model_are_rejected(tiny_model, overrides, message):
    with pytest.raises(ValueError, match=message):
        param_groups(tiny_model, build_optim_config(**overrides))


def test_regex_patterns_select_like_globs(tiny_model):
    glob = param_groups(tiny_model, OptimConfig())
    regex = param_groups(
        tiny_model,
        build_optim_config(
            lr_groups={
                "vision": {"params": [r"re:backbone\.vision_backbone\..+"], "lr": 2.5e-5},
                "text": {"params": [r"re:backbone\.language_backbone\..+"], "lr": 5e-6},
            },
            no_weight_decay={"names": ["re:.*bias.*"]},
        ),
    )
    assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in glob] == [
        (g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in regex
    ]


def test_trainer_sets_each_steps_lr_from_the_schedule(tmp_path, shapes_root):
    schedule = ["optim.schedule.kind=inverse_sqrt", "optim.schedule.cooldown_steps=2", "optim.schedule.timescale=1"]
    cfg = tiny_run_config(tmp_path / "run", shapes_root, "trainer.max_steps=3", "data.val=null", *schedule)
    build_trainer(cfg, torch.device("cpu")).run()
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    logged = {record["step"]: record["lr/rest"] for record in stats if "lr/rest" in record}
    config = instantiate(cfg.optim.schedule, _convert_="all")
    # the LR logged after step s is the one step s - 1 trained with
    assert logged == pytest.approx({s: 5e-4 * lr_factor(s - 1, config) for s in (1, 2, 3)}, rel=1e-12)
    assert logged[1] == pytest.approx(5e-4 * 0.01) and logged[3] == pytest.approx(5e-4 / math.sqrt(2) / 2)
