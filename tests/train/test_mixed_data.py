"""A run on mixed data through the real entry point: shapes videos and a Roboflow COCO export, sampled by
weight, each validated on its own (`val/NAME/METRIC` in stats.jsonl and TensorBoard)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3.train.entry import build_trainer
from tests.helpers import tiny_run_config

METRIC = "video_mask_mAP_50_95"


@pytest.mark.timeout(600)
def test_a_mixed_run_trains_and_reports_each_validation_dataset(tmp_path, shapes_root, roboflow_root):
    run_dir = tmp_path / "mixed"
    cfg = tiny_run_config(
        run_dir,
        shapes_root,
        "paths.checkpoint=null",
        f"paths.image_root={roboflow_root}",
        "paths.val_annotations=val/annotations.json",
        "runtime.act_checkpoint=false",
        "data.num_workers=0",
        "data.clips_per_batch=2",
        "data.train.datasets.images.weight=3.0",
        "trainer.max_steps=2",
        "trainer.checkpoint_every=2",
        "trainer.eval_every=0",
        "eval.max_videos=2",
        config_name="roboflow_mixed_ft",
    )
    trainer = build_trainer(cfg, torch.device("cpu"))
    dataset = trainer.train_loader.dataset
    assert dataset.slot_counts() == {"videos": 2, "images": 7}  # 6 videos + 3 images, weights 1:3
    drawn = [dataset.source((0, slot))[0] for slot in trainer.train_loader.sampler.group_share(0)[:4]]
    assert set(drawn) == {"videos", "images"}, drawn  # the first two batches mix both datasets
    summary = trainer.run()

    metrics = summary["metrics"][2]
    for name in ("videos", "images"):
        assert math.isfinite(metrics[f"{name}/{METRIC}"]), metrics
        assert list((run_dir / "eval" / name).glob("predictions_step00000002.json"))
    assert METRIC not in metrics  # only per-dataset keys when data.val names its datasets
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/total"]) for r in stats if "loss/total" in r)
    assert [r["step"] for r in stats if "loss/total" in r] == [1, 2]
    assert {f"videos/{METRIC}", f"images/{METRIC}"} <= set(next(r["val"] for r in stats if "val" in r))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {f"val/videos/{METRIC}", f"val/images/{METRIC}"} <= set(events.Tags()["scalars"])
