"""`data.max_bad_samples`: a corrupt frame stops the run naming the file (default 0), or is skipped on
every rank, logged and counted in stats.jsonl and the checkpoint, up to the limit and never more; bad
annotation records skipped at load time count against the same limit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

import sam3.train.trainer as trainer_module
from sam3.data.index import DataError
from sam3.data.synthetic import generate_dataset
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.train.checkpoint import latest_checkpoint, load_training_state
from sam3.train.entry import build_trainer, run
from tests.helpers import tiny_run_config, train_weights

CPU = torch.device("cpu")
# Two-frame videos and two-frame clips: every clip holds every frame of its video, so a run of as many
# steps as videos loads the corrupt frame whatever the shuffle; with 2 ranks, one rank holds it.
NUM_VIDEOS = 3
COMMON = ["data.clip_len=2", "data.val=null", f"trainer.max_steps={NUM_VIDEOS}", "trainer.checkpoint_every=0"]


@pytest.fixture(scope="module")
def two_frame_shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_frame_shapes")
    generate_dataset(root, num_videos=NUM_VIDEOS, num_frames=2, image_size=64, seed=0, num_val_videos=1)
    return root


def _corrupt_copy(source: Path, dest: Path, videos: tuple[int, ...] = (0,)) -> list[Path]:
    """A copy of the dataset with frame 1 of each of `videos` truncated; returns those frame files."""
    shutil.copytree(source, dest)
    bad = []
    for video in videos:
        path = dest / "train" / f"video_{video:05d}" / "00001.jpg"
        path.write_bytes(path.read_bytes()[:200])
        bad.append(path)
    return bad


def _stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_a_bad_frame_is_skipped_logged_counted_and_checkpointed(two_frame_shapes, tmp_path, caplog):
    (bad,) = _corrupt_copy(two_frame_shapes, tmp_path / "data")
    cfg = tiny_run_config(tmp_path / "run", tmp_path / "data", *COMMON, "data.max_bad_samples=1")
    summary = build_trainer(cfg, CPU).run()
    assert summary["step"] == NUM_VIDEOS  # the bad clip cost no step
    stats = _stats(tmp_path / "run")
    skips = [record for record in stats if "bad_sample" in record]
    assert len(skips) == 1 and skips[0]["data/bad_samples"] == 1
    assert str(bad) in skips[0]["bad_sample"]["error"] and "video 0 frame 1" in skips[0]["bad_sample"]["error"]
    assert stats[-1]["step"] == NUM_VIDEOS and stats[-1]["data/bad_samples"] == 1
    assert load_training_state(latest_checkpoint(tmp_path / "run"))["bad_samples"] == 1
    assert "skipping bad sample 1 of data.max_bad_samples=1" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_with_a_skip_resumes_exactly(two_frame_shapes, tmp_path, monkeypatch):
    _corrupt_copy(two_frame_shapes, tmp_path / "data")
    overrides = [*COMMON, "data.max_bad_samples=1", "trainer.checkpoint_every=1"]
    reference = train_weights(tiny_run_config(tmp_path / "uninterrupted", tmp_path / "data", *overrides))
    real_step = trainer_module.forward_backward
    calls = {"n": 0}

    def crash_on_last_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == NUM_VIDEOS:
            raise KeyboardInterrupt("simulated kill during the last step")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "forward_backward", crash_on_last_step)
    with pytest.raises(KeyboardInterrupt):
        train_weights(tiny_run_config(tmp_path / "crashed", tmp_path / "data", *overrides))
    monkeypatch.setattr(trainer_module, "forward_backward", real_step)
    resumed = train_weights(tiny_run_config(tmp_path / "crashed", tmp_path / "data", *overrides))
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), f"{name} differs"
    assert load_training_state(latest_checkpoint(tmp_path / "crashed"))["bad_samples"] == 1
    assert _stats(tmp_path / "crashed")[-1]["data/bad_samples"] == 1


def test_more_bad_samples_than_allowed_stop_the_run(two_frame_shapes, tmp_path):
    _corrupt_copy(two_frame_shapes, tmp_path / "data", videos=(0, 1))
    cfg = tiny_run_config(tmp_path / "run", tmp_path / "data", *COMMON, "data.max_bad_samples=1")
    with pytest.raises(DataError, match=r"frame 1.*bad sample 2 of the run, more than data.max_bad_samples=1"):
        build_trainer(cfg, CPU).run()


def _break_records(dataset_root: Path, num_records: int) -> list[str]:
    """Moves the first box of `num_records` annotations outside the image, each from a pair that keeps
    other masklets (so the pair stays, one skipped record each); returns their names."""
    path = dataset_root / "train" / "annotations.json"
    gt = json.loads(path.read_text())
    shared = {(p["video_id"], p["category_id"]) for p in gt["video_np_pairs"] if p["num_masklets"] >= 2}
    broken = [a for a in gt["annotations"] if (a["video_id"], a["category_id"]) in shared][:num_records]
    assert len(broken) == num_records, "the generated data has too few shared pairs"
    for ann in broken:
        t = next(t for t, box in enumerate(ann["bboxes"]) if box is not None)
        ann["bboxes"][t] = [1000.0, 0.0, 5.0, 5.0]
    path.write_text(json.dumps(gt))
    return [f"annotation {ann['id']}" for ann in broken]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_annotation_records_count_against_the_limit(two_frame_shapes, tmp_path):
    _corrupt_copy(two_frame_shapes, tmp_path / "data")
    _break_records(tmp_path / "data", 1)
    cfg = tiny_run_config(tmp_path / "run", tmp_path / "data", *COMMON, "data.max_bad_samples=2")
    assert build_trainer(cfg, CPU).run()["step"] == NUM_VIDEOS
    stats = _stats(tmp_path / "run")
    assert stats[0] == {"step": 0, "data/bad_samples": 1, "data/bad_records": 1}
    assert stats[-1]["data/bad_samples"] == 2  # the record, then the frame
    cfg = tiny_run_config(tmp_path / "run1", tmp_path / "data", *COMMON, "data.max_bad_samples=1")
    with pytest.raises(DataError, match=r"frame 1.*bad sample 2 of the run"):
        build_trainer(cfg, CPU).run()


def test_more_bad_annotation_records_than_allowed_stop_at_load(two_frame_shapes, tmp_path):
    shutil.copytree(two_frame_shapes, tmp_path / "data")
    first, _ = _break_records(tmp_path / "data", 2)
    cfg = tiny_run_config(tmp_path / "run", tmp_path / "data", *COMMON, "data.max_bad_samples=1")
    with pytest.raises(DataError, match=rf"{first}: field 'bboxes\[.*2 bad records in the file, more than"):
        build_trainer(cfg, CPU)
    cfg = tiny_run_config(tmp_path / "run", tmp_path / "data", *COMMON)  # default 0: the reader raises
    with pytest.raises(InstantiationException, match=rf"{first}: field 'bboxes\[.*lies outside"):
        build_trainer(cfg, CPU)


def test_max_bad_samples_must_be_a_count(two_frame_shapes, tmp_path):
    cfg = tiny_run_config(tmp_path / "run", two_frame_shapes, *COMMON, "data.max_bad_samples=-1")
    with pytest.raises(ValueError, match=r"data.max_bad_samples=-1: expected an integer >= 0"):
        build_trainer(cfg, CPU)


def _rank_run(run_dir: Path, dataset_root: Path, max_bad_samples: int) -> int:
    cfg = tiny_run_config(run_dir, dataset_root, *COMMON, f"data.max_bad_samples={max_bad_samples}")
    return run(cfg)["step"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_run_skips_a_corrupt_frame_held_by_one_rank(two_frame_shapes, tmp_path):
    (bad,) = _corrupt_copy(two_frame_shapes, tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run_on_local_ranks(_rank_run, 2, run_dir, tmp_path / "data", 1, timeout_s=240) == [NUM_VIDEOS] * 2
    skips = [record for record in _stats(run_dir) if "bad_sample" in record]
    assert [record["data/bad_samples"] for record in skips] == [1] and str(bad) in skips[0]["bad_sample"]["error"]
    assert _stats(run_dir)[-1]["data/bad_samples"] == 1
    assert "skipping bad sample 1" in (run_dir / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_run_stops_at_a_corrupt_frame_by_default(two_frame_shapes, tmp_path):
    (bad,) = _corrupt_copy(two_frame_shapes, tmp_path / "data")
    with pytest.raises(RuntimeError) as info:
        run_on_local_ranks(_rank_run, 2, tmp_path / "run", tmp_path / "data", 0, timeout_s=240)
    assert "DataError" in str(info.value) and f"frame file {bad} " in str(info.value)
    assert "video 0 frame 1" in str(info.value)
