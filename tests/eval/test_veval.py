"""SA-Co/VEval metrics: perfect, empty and shuffled predictions, and equality with SAM3's evaluator."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest

from sam3.eval.saco_format import parse_ground_truth, parse_predictions
from sam3.eval.veval import evaluate_veval, evaluate_veval_files, main
from tests.helpers import gt_as_predictions

AP_HOTA_KEYS = [
    f"video_{kind}_{name}"
    for kind in ("bbox", "mask")
    for name in ["mAP_50_95", "phrase_ap_50_95", "phrase_ap_50", "phrase_ap_75"]
    + [f"all_phrase_{m}" for m in ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA")]
]
TETA_KEYS = [
    f"video_mask_{k}"
    for k in ("teta", "loc_a", "assoc_a", "cls_a", "loc_re", "loc_pr", "assoc_re", "assoc_pr", "cls_re", "cls_pr")
]


def _evaluate(gt_dict: dict, preds: list[dict]) -> dict:
    gt = parse_ground_truth(gt_dict)
    return evaluate_veval(gt, parse_predictions(preds, gt))


def test_perfect_predictions_score_one(veval_gt):
    res = _evaluate(veval_gt, gt_as_predictions(veval_gt))["dataset_results"]
    for key in AP_HOTA_KEYS:
        assert res[key] == pytest.approx(1.0, abs=1e-9), key
    for key in TETA_KEYS:
        assert res[key] == pytest.approx(100.0), key
    for kind in ("bbox", "mask"):  # SAM3's 1e-4 / 1e-6 smoothing keeps these a hair below 1
        assert res[f"video_{kind}_demo_cgf1_micro_50_95"] == pytest.approx(1.0, abs=1e-3)
        assert res[f"video_{kind}_demo_ilmcc_50_95"] == pytest.approx(1.0, abs=1e-3)


def test_empty_predictions_score_zero(veval_gt):
    out = _evaluate(veval_gt, [])
    res = out["dataset_results"]
    for key in AP_HOTA_KEYS + TETA_KEYS:
        if key.endswith("_LocA"):
            assert res[key] == 1.0, key  # TrackEval defines localisation accuracy without detections as 1
        else:
            assert res[key] == 0.0, key
    for kind in ("bbox", "mask"):
        assert res[f"video_{kind}_demo_cgf1_micro_50_95"] == 0.0
    assert len(out["video_np_results"]) == len(veval_gt["video_np_pairs"])


def test_shuffled_predictions_score_the_same(veval_gt):
    preds = gt_as_predictions(veval_gt)
    rng = random.Random(0)
    for i, pred in enumerate(preds):  # degrade some predictions so that the metrics are not all 1
        pred["score"] = 0.3 + 0.65 * rng.random()
        if i % 3 == 0:
            pred["segmentations"] = pred["segmentations"][::-1]
            pred["bboxes"] = pred["bboxes"][::-1]
            pred["areas"] = pred["areas"][::-1]
        if i % 4 == 1:
            pred["category_id"] = 6
    shuffled = preds[:]
    rng.shuffle(shuffled)
    first, second = _evaluate(veval_gt, preds), _evaluate(veval_gt, shuffled)
    assert 0.0 < first["dataset_results"]["video_mask_mAP_50_95"] < 1.0
    assert first["dataset_results"] == pytest.approx(second["dataset_results"], abs=1e-12)

    def by_pair(out):
        return {(r["video_id"], r["category_id"]): r for r in out["video_np_results"]}

    assert by_pair(first).keys() == by_pair(second).keys()
    for pair, values in by_pair(first).items():
        assert values == pytest.approx(by_pair(second)[pair], abs=1e-12)


def _assert_same_results(ours: dict, expected: dict) -> None:
    """Every key of `expected` (dataset and per pair) within 1e-6, pairs in the same order."""
    for key, value in expected["dataset_results"].items():
        assert _nan_ilmcc(key, value) or ours["dataset_results"][key] == pytest.approx(value, abs=1e-6), key
    ours_pairs = [(r["video_id"], r["category_id"]) for r in ours["video_np_results"]]
    assert ours_pairs == [(r["video_id"], r["category_id"]) for r in expected["video_np_results"]]
    for mine, theirs in zip(ours["video_np_results"], expected["video_np_results"], strict=True):
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, abs=1e-6), (mine["video_id"], mine["category_id"], key)


def _nan_ilmcc(key: str, value: float) -> bool:
    """SAM3 writes IL_MCC at 0.5 / 0.75 as cgF1 / positive F1, NaN when that F1 is 0; ours is IL_MCC itself."""
    return "_ilmcc_" in key and math.isnan(value)


def test_synthetic_case_reproduces_sam3_results():
    data = Path(__file__).parent / "data"
    ours = evaluate_veval_files(data / "veval_case_gt.json", data / "veval_case_pred.json")
    _assert_same_results(ours, json.loads((data / "veval_case_res_sam3_0.1.4.json").read_text()))


def test_toy_files_reproduce_sam3_results(veval_toy_dir, tmp_path):
    toy = veval_toy_dir
    out_file = tmp_path / "res.json"
    start = time.perf_counter()
    main(
        [
            "--gt",
            str(toy / "toy_saco_veval_sav_test_gt.json"),
            "--pred",
            str(toy / "toy_saco_veval_sav_test_pred.json"),
            "--out",
            str(out_file),
        ]
    )
    elapsed = time.perf_counter() - start
    ours = json.loads(out_file.read_text())
    _assert_same_results(ours, json.loads((toy / "toy_saco_veval_sav_test_eval_res_sam3_0.1.4.json").read_text()))
    # the first release's extra "demo" keys, whose definitions are recovered, equal its published values
    published = json.loads((toy / "toy_saco_veval_sav_test_eval_res.json").read_text())["dataset_results"]
    expected_keys = json.loads((toy / "toy_saco_veval_sav_test_eval_res_sam3_0.1.4.json").read_text())[
        "dataset_results"
    ]
    extras = set(published) - set(expected_keys)
    assert len(extras) == 34
    for key in extras:
        assert ours["dataset_results"][key] == pytest.approx(published[key], abs=1e-6), key
    assert not any(math.isnan(v) for v in ours["dataset_results"].values())
    assert elapsed < 60


def test_without_np_pairs_cgf1_is_skipped(veval_gt):
    del veval_gt["video_np_pairs"]
    out = _evaluate(veval_gt, gt_as_predictions(veval_gt))
    assert not any("_demo_" in key for key in out["dataset_results"])
    assert out["dataset_results"]["video_mask_phrase_ap_50"] == 1.0
    assert all(r["mask_F1_50"] == 1.0 for r in out["video_np_results"])
