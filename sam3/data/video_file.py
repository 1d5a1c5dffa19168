"""Video files (.mp4, .webm, ...): frame-accurate random access with PyAV, and a writer.

`VideoFile` indexes a file's packets once (demuxing only, no decoding) to learn every frame's
presentation timestamp and where the keyframes are. Reading frame t seeks to the last keyframe at or
before t and decodes forward to t; reading frames in increasing order continues decoding without a
new seek while no keyframe lies between the last frame decoded and the next one asked for. So a rank
that owns every F-th frame decodes its own frames plus, at most, the frames between each of them and
its keyframe: nothing when every frame is a keyframe, the whole video when a GOP spans more than F
frames. `decoded_frames` counts what was actually decoded.

PyAV was chosen over torchcodec by measurement (README): its wheels bundle FFmpeg, while torchcodec
loads the system's FFmpeg libraries, which a bare machine (and our CI) does not have.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from sam3.data.index import VIDEO_SUFFIXES


def is_video_file(name: str | Path) -> bool:
    """Whether `name` names a video file (by its suffix) rather than a frame image."""
    return str(name).lower().endswith(VIDEO_SUFFIXES)


class VideoFile:
    """Random access to the frames of one video file.

    Args:
        path: the video file.

    Raises:
        ValueError: the file is missing, unreadable, has no video stream or no frame.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as e:
            raise ValueError(f"cannot open video file {self.path}: {e}") from None
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"video file {self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        # no frame threading: it delays every frame pulled one by one (measured 9x slower on a rank's frames);
        # data-loader workers decode in parallel instead
        pts, keyframes = [], []
        for packet in self._container.demux(self._stream):
            if packet.pts is None:  # the flush packet at the end
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
        if not pts:
            self._container.close()
            raise ValueError(f"video file {self.path} holds no frame")
        self.frame_pts = sorted(pts)  # presentation order
        self._index_of_pts = {p: i for i, p in enumerate(self.frame_pts)}
        self.keyframe_indices = sorted(self._index_of_pts[p] for p in keyframes) or [0]
        self.height = int(self._stream.codec_context.height)
        self.width = int(self._stream.codec_context.width)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.decoded_frames = 0
        # one colour converter for the file: a frame's own `to_ndarray` builds a new one each call (~6 ms)
        self._reformatter = VideoReformatter()
        self._frames: Iterator[av.VideoFrame] | None = None
        self._position = -1  # index of the last frame decoded by `_frames`

    @property
    def num_frames(self) -> int:
        return len(self.frame_pts)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames `indices` as an (N, 3, H, W) uint8 RGB tensor, in the order asked (decoded in increasing order)."""
        frames = {t: self.frame(t) for t in sorted(set(indices))}
        return (
            torch.stack([frames[t] for t in indices])
            if indices
            else torch.empty(0, 3, self.height, self.width, dtype=torch.uint8)
        )

    def frame(self, t: int) -> torch.Tensor:
        """Frame t as a (3, H, W) uint8 RGB tensor."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} of {self.path}, which has {self.num_frames} frames")
        keyframe = self.keyframe_indices[bisect.bisect_right(self.keyframe_indices, t) - 1]
        if self._frames is None or not keyframe <= self._position + 1 <= t:  # seek when it skips frames
            self._seek(keyframe)
        target = self.frame_pts[t]
        try:
            for decoded in self._frames:
                self.decoded_frames += 1
                self._position = self._index_of_pts.get(decoded.pts, self._position)
                if decoded.pts == target:
                    rgb = self._reformatter.reformat(decoded, format="rgb24", interpolation="FAST_BILINEAR")
                    return torch.from_numpy(np.ascontiguousarray(rgb.to_ndarray().transpose(2, 0, 1)))  # 3, H, W
                if decoded.pts is not None and decoded.pts > target:
                    break
            problem = "not found in the decoded stream"
        except av.error.FFmpegError as e:
            problem = f"corrupt or truncated? {e}"
        self._frames = None
        raise ValueError(f"video file {self.path}: cannot decode frame {t} (pts {target}): {problem}")

    def close(self) -> None:
        self._frames = None
        self._container.close()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _seek(self, keyframe: int) -> None:
        self._container.seek(self.frame_pts[keyframe], stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._position = -1


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, gop_size: int | None = None) -> int:
    """Encodes (H, W, 3) uint8 RGB frames to `path`; returns the number written.

    H.264 (libx264, or MPEG-4 part 2 where the FFmpeg build lacks it) for .mp4 and the other suffixes,
    VP9 for .webm. Odd sizes are padded by one edge pixel (4:2:0 chroma needs even sizes). `gop_size`
    sets the keyframe interval (1: every frame a keyframe).
    """
    path = Path(path)
    codecs = ("libvpx-vp9", "libvpx") if path.suffix.lower() == ".webm" else ("libx264", "mpeg4")
    count = 0
    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                stream = _add_stream(container, codecs, Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = width + width % 2, height + height % 2
                stream.pix_fmt = "yuv420p"
                if gop_size is not None:
                    stream.codec_context.gop_size = gop_size
            if frame.shape[0] % 2 or frame.shape[1] % 2:
                frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count


def _add_stream(container: av.container.OutputContainer, codecs: Sequence[str], rate: Fraction):
    for codec in codecs:
        try:
            return container.add_stream(codec, rate=rate)
        except (av.error.FFmpegError, ValueError):
            continue
    raise ValueError(f"none of the encoders {list(codecs)} is in this FFmpeg build")
