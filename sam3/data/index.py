"""The in-memory index every reader produces: videos, their masklets and their video-phrase pairs.

A COCO image is a video of one frame. A masklet is one annotated instance of one phrase across the
frames of a video: per frame a compressed RLE (or None where the instance is not visible) and an
absolute xywh box (None where not visible). A video-phrase pair says a phrase was annotated for a
video and how many masklets it has; 0 makes it a negative pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sam3.ops.masks import RLE

# Suffixes of video files (`sam3.data.video_file` decodes them).
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


class DataError(ValueError):
    """Bad input data, naming the file, the record (video / annotation id) and the field."""

    def __init__(self, path: Any, record: str | None, field_name: str | None, problem: str):
        self.path = str(path)
        self.record = record
        self.field_name = field_name
        self.problem = problem
        where = [self.path]
        if record is not None:
            where.append(record)
        if field_name is not None:
            where.append(f"field '{field_name}'")
        super().__init__(f"{': '.join(where)}: {problem}")


@dataclass
class VideoRecord:
    """One video (or image): its frame files and size.

    Attributes:
        video_id: the id used by the annotation file.
        name: a readable name (video_name, or the image file name).
        file_names: T frame paths relative to the frames root; for a video file, T times its path.
        height: frame height in pixels (every frame).
        width: frame width in pixels (every frame).
    """

    video_id: Any
    name: str
    file_names: list[str]
    height: int
    width: int

    @property
    def length(self) -> int:
        return len(self.file_names)

    @property
    def video_file(self) -> str | None:
        """The video file holding every frame (then every entry of `file_names`), or None for frame files."""
        first = self.file_names[0] if self.file_names else ""
        return first if first.lower().endswith(VIDEO_SUFFIXES) and len(set(self.file_names)) == 1 else None


@dataclass
class Masklet:
    """One instance of one phrase across the frames of a video.

    Attributes:
        ann_id: the annotation id.
        category_id: the id of the phrase (category) it belongs to.
        phrase: the noun phrase.
        boxes_xywh: per frame (T entries) an absolute [x, y, w, h] box, or None where not visible.
        segmentations: per frame a compressed RLE (str counts) or None, or None for a box-only dataset.
        is_crowd: a crowd region rather than one instance.
    """

    ann_id: Any
    category_id: Any
    phrase: str
    boxes_xywh: list[list[float] | None]
    segmentations: list[RLE | None] | None = None
    is_crowd: bool = False

    def is_visible(self, frame_idx: int) -> bool:
        box = self.boxes_xywh[frame_idx]
        return box is not None and box[2] > 0 and box[3] > 0


@dataclass
class PhrasePair:
    """A phrase annotated for a video.

    Attributes:
        category_id: the id of the phrase.
        phrase: the noun phrase (the text prompt).
        num_masklets: how many masklets the phrase has in the video; 0 = negative pair.
        is_exhaustive: every instance is annotated, so unmatched predictions may be penalised.
    """

    category_id: Any
    phrase: str
    num_masklets: int
    is_exhaustive: bool = True


@dataclass
class DatasetIndex:
    """What a reader returns: videos with, aligned by position, their masklets and phrase pairs.

    Attributes:
        source: the annotation file.
        format: "saco_veval", "ytvis" or "coco".
        videos: V videos.
        masklets: per video, its masklets.
        pairs: per video, its video-phrase pairs (positives and negatives).
        phrases: every phrase (category name) of the dataset, in category order.
        has_masks: masklets carry segmentations (False for a box-only dataset).
        num_skipped: bad records dropped by a reader run with on_error="skip".
        info: the file's `info` block, if any.
    """

    source: str
    format: str
    videos: list[VideoRecord]
    masklets: list[list[Masklet]]
    pairs: list[list[PhrasePair]]
    phrases: list[str]
    has_masks: bool = True
    num_skipped: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.videos)

    def counts(self) -> dict[str, int]:
        """Videos, frames, masklets, phrases, positive and negative pairs, skipped records."""
        used_phrases = {pair.phrase for video_pairs in self.pairs for pair in video_pairs}
        return {
            "videos": len(self.videos),
            "frames": sum(video.length for video in self.videos),
            "masklets": sum(len(m) for m in self.masklets),
            "phrases": len(used_phrases),
            "positive_pairs": sum(p.num_masklets > 0 for video_pairs in self.pairs for p in video_pairs),
            "negative_pairs": sum(p.num_masklets == 0 for video_pairs in self.pairs for p in video_pairs),
            "skipped_records": self.num_skipped,
        }
