"""`predict_video` end to end on the tiny preset and a generated mp4: overlay video, SA-Co/VEval JSON,
and the frames spread over two gloo ranks, each decoding only its own frames."""

from __future__ import annotations

import json

import pytest
import torch

from sam3 import build_model
from sam3.data.synthetic import synthetic_video
from sam3.data.video_file import VideoFile, write_video
from sam3.distributed.frame_shard import build_frame_group
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.tools import predict_video
from sam3.tools.predict import load_model

NUM_FRAMES = 5


def _checkpoint_and_video(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(build_model("tiny").state_dict(), checkpoint)
    frames, _ = synthetic_video(0, "val", 0, NUM_FRAMES, 64)
    video = tmp_path / "in.mp4"
    write_video(video, (f.permute(1, 2, 0).numpy() for f in frames), fps=5, gop_size=1)  # every frame a keyframe
    return checkpoint, video


def test_predict_video_writes_an_overlay_and_veval_predictions(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict_video, "setup_logging", lambda rank: None)  # keep pytest's log handlers
    checkpoint, video = _checkpoint_and_video(tmp_path)
    out, pred = tmp_path / "out.mp4", tmp_path / "pred.json"
    args = ["--checkpoint", str(checkpoint), "--video", str(video), "--model", "tiny", "--device", "cpu"]
    args += ["--prompt", "red circle", "--prompt", "blue square", "--threshold", "0", "--out", str(out)]
    predict_video.main([*args, "--json", str(pred), "--log-every", "2"])

    lines = capsys.readouterr().out.splitlines()
    records = json.loads(pred.read_text())
    assert lines[0].startswith(f"{len(records)} masklets of ['red circle', 'blue square']")
    assert records and {r["category_id"] for r in records} <= {1, 2}
    for r in records:
        assert r["video_id"] == 0 and r["noun_phrase"] == ["red circle", "blue square"][r["category_id"] - 1]
        assert len(r["bboxes"]) == len(r["segmentations"]) == len(r["areas"]) == NUM_FRAMES
        assert 0 < r["score"] <= 1
    with VideoFile(out) as written, VideoFile(video) as original:
        assert (written.num_frames, written.height, written.width) == (NUM_FRAMES, 64, 64)
        assert not torch.equal(written.frame(0), original.frame(0))  # something was drawn


def _rank_predicts(checkpoint, video_path):
    model, input_size = load_model(checkpoint, "tiny", torch.device("cpu"))
    group = build_frame_group(None)
    with VideoFile(video_path) as video:
        records = predict_video.predict_video(model, video, ["red circle"], input_size, group)
        return video.decoded_frames, records


@pytest.mark.slow
def test_two_ranks_decode_only_their_frames_and_predict_like_one(tmp_path):
    checkpoint, video = _checkpoint_and_video(tmp_path)
    (decoded0, records0), (decoded1, records1) = run_on_local_ranks(_rank_predicts, 2, checkpoint, video, timeout_s=300)
    assert (decoded0, decoded1) == (3, 2)  # frames 0, 2, 4 and 1, 3
    assert records1 == []
    decoded, single = _rank_predicts(checkpoint, video)
    assert decoded == NUM_FRAMES
    assert len(records0) == len(single)
    for sharded, alone in zip(records0, single, strict=True):
        assert sharded["score"] == pytest.approx(alone["score"], abs=1e-4)
        assert [b is None for b in sharded["bboxes"]] == [b is None for b in alone["bboxes"]]
        for a, b in zip(sharded["bboxes"], alone["bboxes"], strict=True):
            assert a is None or a == pytest.approx(b, abs=1e-2)
