"""Annotation records that point at video files: reading, validation (frame count against the file),
and training on them with each rank decoding only its own frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sam3.data import inspect
from sam3.data.dataset import build_video_dataset
from sam3.data.frames import FrameReader
from sam3.data.index import DataError
from sam3.data.readers import load_annotations
from sam3.data.synthetic import generate_dataset
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.train.entry import run
from tests.helpers import tiny_run_config

NUM_VIDEOS, NUM_FRAMES = 3, 4


@pytest.fixture(scope="module")
def mp4_shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mp4_shapes")
    generate_dataset(root, NUM_VIDEOS, NUM_FRAMES, image_size=64, seed=0, num_val_videos=1, video_files=True)
    return root


def test_records_name_the_video_file_and_its_length(mp4_shapes):
    index = load_annotations(mp4_shapes / "train" / "annotations.json")
    video = index.videos[0]
    assert video.video_file == "video_00000.mp4" and video.length == NUM_FRAMES
    assert video.name == "video_00000"


def test_a_rank_decodes_only_its_frames_of_a_clip(mp4_shapes):
    images = {}
    for rank in (0, 1):
        dataset = build_video_dataset(
            mp4_shapes / "train" / "annotations.json", image_size=32, train=False, group_size=2, group_rank=rank
        )
        sample = dataset[(0, 0)]
        assert sample.frame_indices.tolist() == [rank, rank + 2]
        assert dataset.frames.decoded_frames == 2  # every frame is a keyframe: nothing decoded and dropped
        images[rank] = sample.images
    assert not torch.equal(images[0], images[1])


def test_the_validator_checks_frame_counts_against_the_file(mp4_shapes, tmp_path, capsys):
    annotations = mp4_shapes / "train" / "annotations.json"
    assert inspect.main([str(annotations), "--frames-root", str(annotations.parent)]) == 0
    assert f"frame files ok  {NUM_VIDEOS * NUM_FRAMES}" in capsys.readouterr().out

    data = json.loads(annotations.read_text())
    data["videos"][1]["length"] = NUM_FRAMES + 1
    for ann in data["annotations"]:
        if ann["video_id"] == 1:
            for key in ("bboxes", "segmentations", "areas"):
                ann[key] = ann[key] + [None]
    wrong = tmp_path / "annotations.json"
    wrong.write_text(json.dumps(data))
    assert inspect.main([str(wrong), "--frames-root", str(annotations.parent)]) == 1
    message = capsys.readouterr().err
    assert (
        f"video 1: field 'length': video file {annotations.parent / 'video_00001.mp4'} holds {NUM_FRAMES} frames but the annotations say {NUM_FRAMES + 1}"
        in message
    )
    index = load_annotations(wrong)
    with pytest.raises(DataError, match="holds 4 frames"):
        FrameReader(annotations.parent, str(wrong)).read(index.videos[1], [0])


def _rank_trains(run_dir: Path, dataset_root: Path) -> list[tuple[int, int]]:
    reads = []
    real_read = FrameReader.read

    def counted(self, video, frame_indices):
        before = self.decoded_frames
        frames = real_read(self, video, frame_indices)
        reads.append((len(frame_indices), self.decoded_frames - before))
        return frames

    FrameReader.read = counted
    overrides = ["data.clip_len=2", "data.val=null", "trainer.max_steps=2", "trainer.checkpoint_every=0"]
    assert run(tiny_run_config(run_dir, dataset_root, *overrides))["step"] == 2
    return reads


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_train_on_video_files_each_decoding_its_frames(mp4_shapes, tmp_path):
    per_rank = run_on_local_ranks(_rank_trains, 2, tmp_path / "run", mp4_shapes, timeout_s=280)
    for reads in per_rank:
        assert reads and all(asked == decoded == 1 for asked, decoded in reads)  # one frame of each 2-frame clip
