"""LR schedules against SAM3's released fine-tune: the schedule against Meta's
`InverseSquareRootParamScheduler` (hand-computed values, and Meta's class itself when its virtualenv is
present), and the LR the trainer sets at each step."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sam3.train.entry import build_trainer
from sam3.train.optim import ScheduleConfig, build_schedule_config, lr_factor
from tests.train.conftest import tiny_run_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Meta's sam3==0.1.4 installed in a virtualenv, read only to compare numbers.
REFERENCE_VENV = Path(os.environ.get("SAM3_REFERENCE_VENV", "/tmp/refvenv"))


def _experiment(name: str, *overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=["paths.checkpoint=unused", "paths.dataset_root=unused", *overrides])


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
