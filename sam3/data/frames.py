"""Frames: frame files decoded with torchvision.io, video files with PyAV (`FrameReader`), and the
validator's checks (a frame file's header, a video file's frame count and size).

A frame that cannot be used raises `DataError` naming the annotation file, the video and frame, and
the frame file: missing, empty or unreadable, not an image, truncated (a JPEG without its end marker,
a PNG without its IEND chunk, which torchvision would otherwise decode from the rows present) or of
another size than the annotations say. A video file that cannot be opened, holds fewer or more
frames than the annotations' `length` or has another size raises `DataError` too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, read_file

from sam3.data.index import DataError, VideoRecord
from sam3.data.video_file import VideoFile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The last 12 bytes of every complete PNG: the empty IEND chunk (length 0, type, CRC).
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def frame_path(frames_root: str | Path, video: VideoRecord, frame_idx: int) -> Path:
    """The file of frame `frame_idx` of `video` under `frames_root`."""
    return Path(frames_root) / video.file_names[frame_idx]


def read_frame(frames_root: str | Path, video: VideoRecord, frame_idx: int, source: str = "") -> torch.Tensor:
    """Decodes frame `frame_idx` of `video` to a (3, H, W) uint8 RGB tensor, checking its size.

    Args:
        frames_root: folder the video's `file_names` are relative to.
        video: the video record (expected size in `height`, `width`).
        frame_idx: index into `video.file_names`.
        source: the annotation file, named in errors.
    """
    path = frame_path(frames_root, video, frame_idx)
    record = f"video {video.video_id} frame {frame_idx}"
    if not path.is_file():
        problem = "is not a file" if path.exists() else "is missing"
        raise DataError(source, record, "file_names", f"frame file {path} {problem}")
    try:
        data = read_file(str(path))
    except RuntimeError as e:
        raise DataError(source, record, "file_names", f"frame file {path} is unreadable: {_reason(e)}") from None
    if data.numel() >= len(PNG_SIGNATURE) and bytes(data[: len(PNG_SIGNATURE)].tolist()) == PNG_SIGNATURE:
        if bytes(data[-len(PNG_END) :].tolist()) != PNG_END:
            raise DataError(source, record, "file_names", f"frame file {path} is a truncated PNG (no IEND chunk)")
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise DataError(
            source, record, "file_names", f"cannot decode frame file {path} (corrupt or truncated?): {_reason(e)}"
        ) from None
    _check_size(tuple(image.shape[-2:]), video, record, path, source)
    return image


class FrameReader:
    """Decodes the frames a rank owns, from frame files or from a video file.

    A video file stays open while consecutive reads come from it (a data-loader worker reads clip after
    clip); only the asked frames are decoded, each from its keyframe (`VideoFile`). `decoded_frames`
    counts the frames decoded from video files, including those between a keyframe and an asked frame.

    Args:
        frames_root: folder the videos' `file_names` are relative to.
        source: the annotation file, named in errors.
    """

    def __init__(self, frames_root: str | Path, source: str = "") -> None:
        self.frames_root = Path(frames_root)
        self.source = source
        self.decoded_frames = 0
        self._open: VideoFile | None = None

    def read(self, video: VideoRecord, frame_indices: list[int]) -> torch.Tensor:
        """Frames `frame_indices` of `video` as an (N, 3, H, W) uint8 RGB tensor."""
        if video.video_file is None:
            decoded = [read_frame(self.frames_root, video, t, self.source) for t in frame_indices]
            return torch.stack(decoded) if decoded else torch.zeros(0, 3, video.height, video.width, dtype=torch.uint8)
        file = self._video_file(video)
        before = file.decoded_frames
        try:
            frames = file.read(frame_indices)
        except ValueError as e:
            raise DataError(self.source, f"video {video.video_id}", "video_file", str(e)) from None
        self.decoded_frames += file.decoded_frames - before
        return frames.reshape(len(frame_indices), 3, video.height, video.width)

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = None  # each worker opens its own
        return state

    def _video_file(self, video: VideoRecord) -> VideoFile:
        path = self.frames_root / video.video_file
        if self._open is not None and self._open.path == path:
            return self._open
        self.close()
        self._open = open_video_file(self.frames_root, video, self.source)
        return self._open


def open_video_file(frames_root: str | Path, video: VideoRecord, source: str = "") -> VideoFile:
    """Opens `video`'s video file, checking its frame count and size against the annotations."""
    path = Path(frames_root) / video.video_file
    record = f"video {video.video_id}"
    if not path.is_file():
        raise DataError(source, record, "video_file", f"video file {path} is missing")
    try:
        file = VideoFile(path)
    except ValueError as e:
        raise DataError(source, record, "video_file", str(e)) from None
    if file.num_frames != video.length:
        file.close()
        raise DataError(
            source,
            record,
            "length",
            f"video file {path} holds {file.num_frames} frames but the annotations say {video.length}",
        )
    if (file.height, file.width) != (video.height, video.width):
        file.close()
        _check_size((file.height, file.width), video, record, path, source)
    return file


def check_frame_file(frames_root: str | Path, video: VideoRecord, frame_idx: int, source: str = "") -> None:
    """Checks that a frame file exists and has the video's size, reading only its header."""
    path = frame_path(frames_root, video, frame_idx)
    record = f"video {video.video_id} frame {frame_idx}"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(source, record, "file_names", f"frame file {path} is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(source, record, "file_names", f"frame file {path} is not a readable image: {e}") from None
    _check_size((height, width), video, record, path, source)


def _check_size(size: tuple[int, int], video: VideoRecord, record: str, path: Path, source: str) -> None:
    if size != (video.height, video.width):
        raise DataError(
            source,
            record,
            "height/width",
            f"frame file {path} is {size[0]}x{size[1]} (HxW) but the annotations say {video.height}x{video.width}",
        )


def _reason(error: RuntimeError) -> str:
    """torchvision's message without the C++ source location it starts with ("fn, file.cpp:N, reason")."""
    message = str(error).strip()
    _, sep, tail = message.rpartition(".cpp:")
    reason = tail.partition(", ")[2] if sep else ""
    return reason or message
