"""Detector fine-tuning keeps the interactive heads: frozen by default, saved unchanged in checkpoints."""

from __future__ import annotations

import torch

from sam3.train.checkpoint import list_checkpoints
from sam3.train.entry import build_trainer
from tests.helpers import tiny_run_config

INTERACTIVE = ("tracker.", "backbone.vision_backbone.sam2_convs.")


def test_fine_tune_keeps_the_interactive_heads(tmp_path, shapes_root):
    cfg = tiny_run_config(  # the fine-tuning experiment (the demo leaves the heads out), tiny model
        tmp_path / "run",
        shapes_root,
        "paths.checkpoint=null",
        "trainer.max_steps=1",
        "data.val=null",
        "data.num_workers=0",
        config_name="roboflow_video_ft",
    )
    trainer = build_trainer(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith(INTERACTIVE)}
    assert len([k for k in before if k.startswith("tracker.")]) > 100
    trainer.run()
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith(INTERACTIVE))
    saved = torch.load(list_checkpoints(tmp_path / "run")[-1], weights_only=True)["model"]
    saved = {k.removeprefix("module."): v for k, v in saved.items()}
    for key, value in before.items():
        assert torch.equal(saved[key], value), key
