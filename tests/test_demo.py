"""The demo's target report (no training: the report is a pure function of a metrics row)."""

from __future__ import annotations

from sam3.demo import TARGETS, target_report


def test_every_target_is_a_printed_metric():
    from sam3.demo import METRICS

    assert {t.key for t in TARGETS} <= set(METRICS)


def test_target_report_says_met_or_missed_at_the_thresholds():
    row = {"video_bbox_mAP_50_95": 0.30, "video_mask_mAP_50_95": 0.29, "video_mask_demo_cgf1_micro_50_95": 0.20}
    report = target_report(row)
    lines = report.splitlines()
    assert lines[0] == "demo targets (trained row), 1 of 3 met:"
    assert "box mAP >= 0.30" in lines[1] and lines[1].endswith("met") and "MISSED" not in lines[1]
    assert "mask mAP >= 0.30" in lines[2] and lines[2].endswith("MISSED")
    assert "mask cgF1 > 0.20" in lines[3] and lines[3].endswith("MISSED")  # strict: 0.20 is not > 0.20


def test_target_report_counts_a_missing_metric_as_missed():
    assert target_report({}).splitlines()[0] == "demo targets (trained row), 0 of 3 met:"
