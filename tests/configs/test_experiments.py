"""Every experiment config (`configs/*.yaml`, what `--config-name` finds) composes with the tiny model and
builds what `train.py` builds: typed sections, model with its starting weights, loss, data, evaluation,
optimizer, and the SLURM launcher's section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3.launch.slurm import SlurmConfig
from sam3.model_builder import build_model
from sam3.train.entry import build_trainer
from sam3.train.optim import build_optimizer
from tests.helpers import CONFIG_DIR, tiny_run_config

# every top-level config but base.yaml, which the experiments include
EXPERIMENTS = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml") if path.stem != "base")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A bare state dict of the tiny image model, as starting weights (`paths.checkpoint`)."""
    torch.manual_seed(1)
    state = build_model("tiny").state_dict()
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(state, path)
    return path, state


def test_the_experiments_are_found():
    assert {"demo_shapes_video", "roboflow_video_ft", "roboflow_video_eval", "roboflow_mixed_ft"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds_with_the_tiny_model(name, tmp_path, shapes_root, roboflow_root, tiny_weights):
    path, state = tiny_weights
    images = f"++paths.image_root={roboflow_root}"  # the COCO images of the mixed-data experiments
    cfg = tiny_run_config(
        tmp_path / name, shapes_root, f"paths.checkpoint={path}", "data.num_workers=0", images, config_name=name
    )
    trainer = build_trainer(cfg, torch.device("cpu"))
    # every model key comes from the file (the demo leaves out the interactive heads the file also holds)
    assert trainer.model.state_dict().keys() <= state.keys()
    # parameters come from the checkpoint; RoPE tables are recomputed for the input size
    assert [k for k, p in trainer.model.named_parameters() if not torch.equal(p, state[k])] == []
    assert (trainer.train_loader is None) == (trainer.config.mode == "eval")
    assert trainer.evaluate_fn is not None
    build_optimizer(trainer.model, trainer.optim_config)
    slurm = tiny_run_config(
        tmp_path / name, shapes_root, f"paths.checkpoint={path}", "launcher=slurm", images, config_name=name
    )
    assert SlurmConfig.from_cfg(slurm).nodes >= 1


# the options of the groups that change what trains (configs/optim/, configs/lora/)
TRAINING_PRESETS = sorted(
    f"{group}={path.stem}" for group in ("optim", "lora") for path in (CONFIG_DIR / group).glob("*.yaml")
)


def test_the_training_presets_are_found():
    expected = {"optim=adamw", "optim=freeze_vision", "optim=freeze_vision_text", "optim=train_decoder_only"}
    assert expected | {"lora=vit_decoder"} <= set(TRAINING_PRESETS)


@pytest.mark.parametrize("preset", TRAINING_PRESETS)
def test_training_preset_builds_with_the_fine_tune_experiment(preset, tmp_path, shapes_root, tiny_weights):
    path, _ = tiny_weights
    cfg = tiny_run_config(
        tmp_path, shapes_root, f"paths.checkpoint={path}", "data.num_workers=0", preset, config_name="roboflow_video_ft"
    )
    trainer = build_trainer(cfg, torch.device("cpu"))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(list(trainer.model.parameters()))
    optimizer = build_optimizer(trainer.model, trainer.optim_config)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(trainable)
