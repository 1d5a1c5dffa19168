"""Runs on mixed data through the real entry point: shapes videos and a Roboflow COCO export, sampled by
weight, each validated on its own (`val/NAME/METRIC` in stats.jsonl and TensorBoard); two ranks sharing
image and video clips, exact resume, bad records of every dataset against one limit, datasets left out."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3.data.index import DataError
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.train.entry import build_trainer
from tests.helpers import killed_at_step, tiny_run_config, train_weights

METRIC = "video_mask_mAP_50_95"
CPU = torch.device("cpu")


def _mixed_config(run_dir, shapes_root, *overrides):
    """roboflow_mixed_ft with the tiny model: the shapes videos and the COCO images (`paths.image_root=`
    among `overrides`), weighted 1:3."""
    return tiny_run_config(
        run_dir,
        shapes_root,
        "paths.checkpoint=null",
        "runtime.act_checkpoint=false",
        "data.num_workers=0",
        "data.clips_per_batch=2",
        "data.train.datasets.images.weight=3.0",
        "trainer.checkpoint_every=0",
        "trainer.eval_every=0",
        *overrides,
        config_name="roboflow_mixed_ft",
    )


@pytest.mark.timeout(600)
def test_a_mixed_run_trains_and_reports_each_validation_dataset(tmp_path, shapes_root, roboflow_root):
    run_dir = tmp_path / "mixed"
    cfg = _mixed_config(
        run_dir, shapes_root, f"paths.image_root={roboflow_root}", "trainer.max_steps=2", "eval.max_videos=2"
    )
    trainer = build_trainer(cfg, CPU)
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


def _two_rank_mixed_run(run_dir, shapes_root, roboflow_root):
    cfg = _mixed_config(
        run_dir, shapes_root, f"paths.image_root={roboflow_root}", "trainer.max_steps=4", "eval.max_videos=1"
    )
    trainer = build_trainer(cfg, CPU)
    dataset, sampler = trainer.train_loader.dataset, trainer.train_loader.sampler
    sources = [dataset.source((0, slot))[0] for slot in sampler.group_share(0)[:8]]
    local_frames = []
    batches = iter(trainer.train_loader)
    for _ in range(4):
        batch = next(batches)
        local_frames.append((len(batch.images), batch.num_frames.tolist()))
    summary = trainer.run()
    return sources, local_frames, summary["step"], sorted(summary["metrics"].get(4, {}))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_images_and_video_clips_share_a_frame_group_of_two_ranks(tmp_path, shapes_root, roboflow_root):
    """An image clip's one frame is on group rank 0 only: rank 1 holds fewer frames, or none in a batch of
    two images, and the ranks still train and validate in step."""
    results = run_on_local_ranks(_two_rank_mixed_run, 2, tmp_path / "ddp", shapes_root, roboflow_root, timeout_s=500)
    (sources, frames0, step0, keys0), (sources1, frames1, step1, keys1) = results
    assert sources == sources1 and (step0, step1) == (4, 4)
    pairs = [sources[i : i + 2] for i in range(0, 8, 2)]
    assert ["images", "images"] in pairs and any("videos" in p and "images" in p for p in pairs), pairs
    for (n0, lengths0), (n1, lengths1), pair in zip(frames0, frames1, pairs, strict=True):
        assert lengths0 == lengths1 == [2 if name == "videos" else 1 for name in pair]
        assert n0 == len(lengths0) and n1 == lengths0.count(2)  # rank 1: frame 1 of each video clip only
    assert {f"videos/{METRIC}", f"images/{METRIC}"} <= set(keys0) and keys1 == []


def test_bad_records_of_every_dataset_count_against_one_limit(tmp_path, shapes_root, roboflow_root):
    images = tmp_path / "images"
    shutil.copytree(roboflow_root, images)
    path = images / "train" / "_annotations.coco.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 9
    path.write_text(json.dumps(data))
    overrides = (f"paths.image_root={images}", "trainer.max_steps=1")
    trainer = build_trainer(_mixed_config(tmp_path / "one", shapes_root, *overrides, "data.max_bad_samples=1"), CPU)
    assert trainer.bad_records == 1
    data["annotations"][1]["category_id"] = 9
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation 1: field 'category_id'.*2 bad records.*max_bad_samples=1"):
        build_trainer(_mixed_config(tmp_path / "two", shapes_root, *overrides, "data.max_bad_samples=1"), CPU)


def test_a_dataset_set_to_null_is_left_out(tmp_path, shapes_root, roboflow_root):
    overrides = (f"paths.image_root={roboflow_root}", "data.val.videos=null", "data.train.datasets.images=null")
    trainer = build_trainer(_mixed_config(tmp_path / "run", shapes_root, *overrides), CPU)
    assert trainer.train_loader.dataset.names == ["videos"]
    metrics = trainer.evaluate_fn(trainer.model, 0)
    assert metrics and {key.split("/")[0] for key in metrics} == {"images"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_mixed_run_resumes_to_the_same_weights(tmp_path, shapes_root, roboflow_root, monkeypatch):
    # 9 clips an epoch in batches of 2 (the fifth holds one): the resume at step 2 is mid-epoch, step 6 is epoch 1
    overrides = (f"paths.image_root={roboflow_root}", "data.val=null", "trainer.max_steps=6")
    overrides += ("trainer.checkpoint_every=2",)
    reference = train_weights(_mixed_config(tmp_path / "uninterrupted", shapes_root, *overrides))
    with killed_at_step(monkeypatch, 4):
        train_weights(_mixed_config(tmp_path / "crashed", shapes_root, *overrides))
    resumed = train_weights(_mixed_config(tmp_path / "crashed", shapes_root, *overrides))
    assert [name for name, value in reference.items() if not torch.equal(resumed[name], value)] == []
