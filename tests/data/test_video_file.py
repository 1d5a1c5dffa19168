"""Video files: frame-accurate random access (seek to the keyframe, decode forward) and the writer."""

from __future__ import annotations

import pytest
import torch

from sam3.data.synthetic import synthetic_video
from sam3.data.video_file import VideoFile, is_video_file, write_video


def _write(path, num_frames=12, size=48, gop_size=None):
    frames, _ = synthetic_video(0, "train", 0, num_frames, size)
    write_video(path, (f.permute(1, 2, 0).numpy() for f in frames), fps=10, gop_size=gop_size)
    return frames


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_frames_read_in_any_order_match_a_sequential_decode(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    frames = _write(path, gop_size=4)
    with VideoFile(path) as video:
        assert (video.num_frames, video.height, video.width) == (12, 48, 48)
        sequential = video.read(list(range(12)))
    assert sequential.shape == (12, 3, 48, 48) and sequential.dtype == torch.uint8
    assert (sequential.float() - frames.float()).abs().mean() < 8  # lossy codec, same pictures
    with VideoFile(path) as video:
        scattered = video.read([9, 2, 5, 2])
    assert torch.equal(scattered, sequential[[9, 2, 5, 2]])


def test_a_rank_decodes_only_its_frames_when_every_frame_is_a_keyframe(tmp_path):
    path = tmp_path / "intra.mp4"
    _write(path, gop_size=1)
    with VideoFile(path) as video:
        video.read([1, 3, 5, 7, 9, 11])
        assert video.decoded_frames == 6


def test_decoding_starts_at_the_keyframe_before_the_frame(tmp_path):
    path = tmp_path / "gop4.mp4"
    _write(path, gop_size=4)
    with VideoFile(path) as video:
        keyframe = max(k for k in video.keyframe_indices if k <= 9)  # the encoder may place them earlier
        video.read([9])
        assert video.decoded_frames == 9 - keyframe + 1
        if 10 not in video.keyframe_indices:
            video.read([10])  # continues without a seek
            assert video.decoded_frames == 9 - keyframe + 2


def test_odd_sizes_are_padded_and_bad_files_are_named(tmp_path):
    path = tmp_path / "odd.mp4"
    write_video(path, [torch.zeros(7, 9, 3, dtype=torch.uint8).numpy()] * 3, fps=5)
    with VideoFile(path) as video:
        assert (video.num_frames, video.height, video.width) == (3, 8, 10)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        VideoFile(bad)
    assert is_video_file("a/b.MP4") and is_video_file("x.webm") and not is_video_file("f.jpg")


def test_a_truncated_file_is_named(tmp_path):
    path = tmp_path / "cut.mp4"
    _write(path, num_frames=12, gop_size=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.mp4"):  # at opening (index at the end) or at decoding
        with VideoFile(path) as video:
            video.read(list(range(video.num_frames)))
