"""Training checkpoints (`sam3.train.checkpoint`): files and retention, refusing foreign files, RNG states,
and exact resume of a killed run on the tiny model. The weights importer is tested in `tests/test_checkpoint.py`."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sam3.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    restore_rng_states,
    save_checkpoint,
)
from tests.helpers import killed_at_step, tiny_run_config, train_weights


def _draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def test_save_keeps_the_newest_and_lists_only_complete_checkpoints(tmp_path):
    for step in (10, 2, 30, 20):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, keep_last=2)
    (tmp_path / "checkpoints" / "step_00000040.pt.tmp").write_bytes(b"half written")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020.pt", "step_00000030.pt"]
    state = load_training_state(latest_checkpoint(tmp_path))
    assert state["step"] == 30 and torch.equal(state["model"]["w"], torch.full((2,), 30.0))
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_load_refuses_files_that_are_not_training_checkpoints(tmp_path):
    torch.save({"weights": {}}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a sam3 training checkpoint: it has no 'model' entry"):
        load_training_state(tmp_path / "weights.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read training checkpoint"):
        load_training_state(tmp_path / "garbage.pt")


def test_rng_states_round_trip_and_need_the_same_world_size(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model": {}}, keep_last=0)
    expected = _draws()
    _draws()
    restore_rng_states(load_training_state(path))
    assert _draws() == expected
    with pytest.raises(ValueError, match="RNG states for 0 ranks; this run has rank 0"):
        restore_rng_states({"rng_states": []})


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_run_resumes_to_the_same_weights(tmp_path, shapes_root, monkeypatch):
    overrides = ["trainer.max_steps=4", "trainer.checkpoint_every=2", "data.val=null"]
    reference = train_weights(tiny_run_config(tmp_path / "uninterrupted", shapes_root, *overrides))

    crashing_dir = tmp_path / "crashed"
    with killed_at_step(monkeypatch, 4):
        train_weights(tiny_run_config(crashing_dir, shapes_root, *overrides))
    assert [p.name for p in list_checkpoints(crashing_dir)] == ["step_00000002.pt"]

    resumed = train_weights(tiny_run_config(crashing_dir, shapes_root, *overrides))
    _assert_same_weights(resumed, reference)
    assert load_training_state(list_checkpoints(crashing_dir)[-1])["step"] == 4
