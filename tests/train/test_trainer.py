"""Trainer behaviour on the tiny model: exact resume after a crash, gradient accumulation, eval-only
mode, non-finite losses, and a real 2-rank gloo run."""

from __future__ import annotations

import json

import pytest
import torch

import sam3.train.trainer as trainer_module
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.train.checkpoint import list_checkpoints, load_training_state
from sam3.train.entry import build_trainer, run
from tests.train.conftest import deterministic, tiny_run_config

CPU = torch.device("cpu")


def _train(cfg) -> dict:
    trainer = build_trainer(cfg, CPU)
    trainer.run()
    return trainer.model.state_dict()


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_run_resumes_to_the_same_weights(tmp_path, shapes_root, monkeypatch):
    overrides = ["trainer.max_steps=4", "trainer.checkpoint_every=2", "data.val=null"]
    reference = _train(tiny_run_config(tmp_path / "uninterrupted", shapes_root, *overrides))

    crashing_dir = tmp_path / "crashed"
    real_step = trainer_module.forward_backward
    calls = {"n": 0}

    def crash_on_fourth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill during step 4")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "forward_backward", crash_on_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_run_config(crashing_dir, shapes_root, *overrides))
    assert [p.name for p in list_checkpoints(crashing_dir)] == ["step_00000002.pt"]
    monkeypatch.setattr(trainer_module, "forward_backward", real_step)

    resumed = _train(tiny_run_config(crashing_dir, shapes_root, *overrides))
    _assert_same_weights(resumed, reference)
    assert load_training_state(list_checkpoints(crashing_dir)[-1])["step"] == 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gradient_accumulation_equals_a_bigger_batch(tmp_path, shapes_root):
    common = deterministic("trainer.max_steps=1", "data.val=null", "data.train.augment=null")
    big = _train(tiny_run_config(tmp_path / "big", shapes_root, *common, "data.clips_per_batch=2"))
    accumulated = _train(
        tiny_run_config(tmp_path / "acc", shapes_root, *common, "data.clips_per_batch=1", "trainer.grad_accum_steps=2")
    )
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-6, msg=name)


def test_eval_mode_refuses_to_run_without_a_checkpoint(tmp_path, shapes_root):
    cfg = tiny_run_config(tmp_path / "eval", shapes_root, "trainer.mode=eval")
    with pytest.raises(ValueError, match="paths.checkpoint=.*allow_random_init=true"):
        build_trainer(cfg, CPU).run()


def test_non_finite_loss_stops_with_the_step_and_components(tmp_path, shapes_root, monkeypatch):
    real_step = trainer_module.forward_backward

    def poisoned(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        losses.loss = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(trainer_module, "forward_backward", poisoned)
    cfg = tiny_run_config(tmp_path / "nan", shapes_root, "trainer.max_steps=2", "data.val=null")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0: .*loss_ce"):
        build_trainer(cfg, CPU).run()


def test_unknown_trainer_key_is_rejected(tmp_path, shapes_root):
    cfg = tiny_run_config(tmp_path / "bad", shapes_root, "+trainer.max_stesp=3")
    with pytest.raises(ValueError, match="max_stesp.*valid keys"):
        build_trainer(cfg, CPU)


def _two_rank_run(run_dir, shapes_root):
    cfg = tiny_run_config(run_dir, shapes_root, "trainer.max_steps=2", "eval.max_videos=2")
    summary = run(cfg)
    return summary["step"], sorted(summary["metrics"].get(2, {}))[:3]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rank_gloo_run_trains_checkpoints_and_evaluates(tmp_path, shapes_root):
    results = run_on_local_ranks(_two_rank_run, 2, tmp_path / "ddp", shapes_root, timeout_s=500)
    assert [step for step, _ in results] == [2, 2]
    assert results[0][1], "rank 0 returns the validation metrics"
    assert [p.name for p in list_checkpoints(tmp_path / "ddp")] == ["step_00000002.pt"]
    stats = [json.loads(line) for line in (tmp_path / "ddp" / "stats.jsonl").read_text().splitlines()]
    assert any("loss/loss_ce" in record for record in stats)
    assert (tmp_path / "ddp" / "config.yaml").exists() and (tmp_path / "ddp" / "config_resolved.yaml").exists()
