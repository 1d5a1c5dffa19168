"""`evaluate` end to end on generated shapes videos: one process, and 2 gloo ranks (one frame group of
two, or two groups of one) writing the same predictions and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sam3.data.synthetic import generate_dataset
from sam3.distributed.frame_shard import build_frame_group
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.eval.evaluate import EvalConfig, evaluate, index_to_veval_gt
from sam3.eval.saco_format import parse_ground_truth
from sam3.model_builder import config_dir
from sam3.tools.check_frame_sharding import DETERMINISTIC_OVERRIDES


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes_eval")
    generate_dataset(root, num_videos=1, num_frames=3, image_size=64, seed=1, num_val_videos=3)
    return root


def _run_evaluate(dataset_root: Path, out_path: Path, frame_group_size: int | None) -> dict:
    overrides = [*DETERMINISTIC_OVERRIDES, f"paths.dataset_root={dataset_root}", "data.image_size=56"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("demo_shapes_video", overrides=overrides)
    group = build_frame_group(frame_group_size)
    torch.manual_seed(0)
    model = instantiate(cfg.video_model, image_model=instantiate(cfg.model))
    dataset = instantiate(cfg.data.val, group_size=group.group_size, group_rank=group.group_rank, _convert_="all")
    return evaluate(model, dataset, group, out_path=out_path, config=EvalConfig(min_score=0.01))


def _record_key(record: dict) -> tuple:
    return record["video_id"], record["category_id"], record["score"]


def test_single_process_writes_predictions_and_metrics(dataset_root, tmp_path):
    metrics = _run_evaluate(dataset_root, tmp_path / "pred.json", None)
    assert {"video_mask_mAP_50_95", "video_bbox_phrase_ap_50", "video_mask_demo_cgf1_micro_50_95"} <= set(metrics)
    records = json.loads((tmp_path / "pred.json").read_text())
    assert records and {"video_id", "category_id", "bboxes", "segmentations", "score", "areas"} <= set(records[0])
    assert (tmp_path / "pred_metrics.json").exists()


def test_ground_truth_of_any_index_round_trips(dataset_root):
    from sam3.data.readers import load_annotations

    index = load_annotations(dataset_root / "val" / "annotations.json")
    gt = parse_ground_truth(index_to_veval_gt(index))
    assert len(gt.videos) == 3 and len(gt.masklets) == sum(len(m) for m in index.masklets)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("frame_group_size", [2, 1], ids=["one_group_of_2", "two_groups_of_1"])
def test_two_ranks_write_the_same_predictions_as_one(dataset_root, tmp_path, frame_group_size):
    single = _run_evaluate(dataset_root, tmp_path / "single.json", None)
    results = run_on_local_ranks(
        _run_evaluate, 2, dataset_root, tmp_path / "sharded.json", frame_group_size, timeout_s=350
    )
    assert results[1] == {}, "only rank 0 returns metrics"
    expected = sorted(json.loads((tmp_path / "single.json").read_text()), key=_record_key)
    got = sorted(json.loads((tmp_path / "sharded.json").read_text()), key=_record_key)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a["segmentations"] == b["segmentations"] and a["bboxes"] == b["bboxes"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)
    for name, value in single.items():
        assert results[0][name] == pytest.approx(value, abs=1e-6), name
