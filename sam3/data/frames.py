"""Frame files: decoding with torchvision.io, and a header-only size check for the validator."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, read_file

from sam3.data.index import DataError, VideoRecord


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
    try:
        data = read_file(str(path))
    except (FileNotFoundError, RuntimeError):
        raise DataError(source, record, "file_names", f"frame file {path} is missing or unreadable") from None
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise DataError(source, record, "file_names", f"cannot decode frame file {path}: {e}") from None
    _check_size(tuple(image.shape[-2:]), video, record, path, source)
    return image


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
