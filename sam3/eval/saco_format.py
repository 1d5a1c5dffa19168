"""SA-Co/VEval files: ground truth and masklet predictions, read into one typed form.

Both files follow the YT-VIS layout. Ground truth: `videos` (`id`, `height`, `width`, `file_names`),
`categories` (`id`, `name`; one category per noun phrase), `annotations` (one per masklet: `id`,
`video_id`, `category_id`, per-frame `bboxes` absolute xywh / `segmentations` COCO RLE / `areas`,
None where the object is not visible, `iscrowd`) and, optionally, `video_np_pairs` (`video_id`,
`category_id`: every phrase asked about a video, including negatives without masklets).
Predictions: a list of masklets (`video_id`, `category_id`, `score`, per-frame `bboxes`,
`segmentations`, `areas`). Masklet ids of predictions are their 1-based position in the file, like
`COCO.loadRes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools import mask as coco_mask

from sam3.ops.masks import RLE

__all__ = [
    "Masklet",
    "Video",
    "VEvalGroundTruth",
    "load_ground_truth",
    "parse_ground_truth",
    "load_predictions",
    "parse_predictions",
    "write_predictions",
    "merge_prediction_shards",
]

Box = list[float]


@dataclass
class Masklet:
    """One object track over the frames of a video (ground truth or prediction).

    Attributes:
        masklet_id: annotation id (ground truth) or 1-based position in the prediction list.
        video_id: the video it belongs to.
        category_id: the noun phrase (category) it answers.
        boxes_xywh: per frame, absolute [x, y, w, h] or None where absent.
        segmentations: per frame, a compressed COCO RLE (str counts) or None where absent.
        areas: per frame, the mask area in pixels or None where absent.
        score: confidence in [0, 1] (1 for ground truth).
        is_crowd: ground-truth crowd flag (ignored by AP matching, like COCO).
    """

    masklet_id: int
    video_id: int
    category_id: int
    boxes_xywh: list[Box | None]
    segmentations: list[RLE | None]
    areas: list[float | None]
    score: float = 1.0
    is_crowd: bool = False

    @property
    def num_frames(self) -> int:
        return len(self.boxes_xywh)


@dataclass
class Video:
    """A ground-truth video: its id, frame size and number of annotated frames."""

    video_id: int
    height: int
    width: int
    num_frames: int
    name: str = ""


@dataclass
class VEvalGroundTruth:
    """SA-Co/VEval ground truth.

    Attributes:
        videos: in file order.
        category_ids: category ids in file order.
        masklets: ground-truth masklets in file order.
        np_pairs: every (video_id, category_id) pair the dataset asks about, in file order, or None
            when the file has no `video_np_pairs` (then negatives are unknown and IL-MCC / cgF1 are skipped).
    """

    videos: list[Video]
    category_ids: list[int]
    masklets: list[Masklet]
    np_pairs: list[tuple[int, int]] | None

    def video(self, video_id: int) -> Video | None:
        """The video with this id, or None."""
        return self._videos_by_id.get(video_id)

    def __post_init__(self) -> None:
        self._videos_by_id = {v.video_id: v for v in self.videos}


def load_ground_truth(path: str | Path) -> VEvalGroundTruth:
    """Reads a SA-Co/VEval ground-truth JSON file."""
    with open(path) as f:
        data = json.load(f)
    return parse_ground_truth(data, source=str(path))


def parse_ground_truth(data: dict[str, Any], source: str = "<ground truth>") -> VEvalGroundTruth:
    """Builds the typed ground truth from a parsed SA-Co/VEval GT dict."""
    for key in ("videos", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{source}: ground truth has no '{key}' list")
    videos = []
    for i, v in enumerate(data["videos"]):
        _require(v, ("id", "height", "width"), f"{source}: videos[{i}]")
        num_frames = len(v["file_names"]) if "file_names" in v else int(v["length"])
        videos.append(Video(int(v["id"]), int(v["height"]), int(v["width"]), num_frames, v.get("video_name", "")))
    by_id = {v.video_id: v for v in videos}
    masklets = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}] (id {ann.get('id')})"
        _require(ann, ("id", "video_id", "category_id", "bboxes", "segmentations"), where)
        video = by_id.get(int(ann["video_id"]))
        if video is None:
            raise ValueError(f"{where}: video_id {ann['video_id']} is not in 'videos'")
        masklets.append(_parse_masklet(ann, int(ann["id"]), video, where, 1.0, bool(ann.get("iscrowd", 0))))
    np_pairs = None
    if "video_np_pairs" in data:
        np_pairs = [(int(p["video_id"]), int(p["category_id"])) for p in data["video_np_pairs"]]
    return VEvalGroundTruth(videos, [int(c["id"]) for c in data["categories"]], masklets, np_pairs)


def load_predictions(path: str | Path, gt: VEvalGroundTruth) -> list[Masklet]:
    """Reads a SA-Co/VEval prediction JSON file (a list of masklets) checked against `gt`'s videos."""
    with open(path) as f:
        data = json.load(f)
    return parse_predictions(data, gt, source=str(path))


def parse_predictions(data: list[dict[str, Any]], gt: VEvalGroundTruth, source: str = "<predictions>") -> list[Masklet]:
    """Builds typed prediction masklets (ids 1..N in list order) from parsed prediction dicts."""
    if not isinstance(data, list):
        raise ValueError(f"{source}: predictions must be a JSON list of masklets, got {type(data).__name__}")
    masklets = []
    for i, pred in enumerate(data):
        where = f"{source}: predictions[{i}]"
        _require(pred, ("video_id", "category_id", "score", "bboxes"), where)
        video = gt.video(int(pred["video_id"]))
        if video is None:
            raise ValueError(f"{where}: video_id {pred['video_id']} is not in the ground truth")
        masklets.append(_parse_masklet(pred, i + 1, video, where, float(pred["score"]), False))
    return masklets


def write_predictions(records: list[dict[str, Any]], path: str | Path) -> None:
    """Writes prediction records (see `sam3.eval.linking.masklets_to_records`) as one JSON list."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(records, f)
    tmp.replace(path)


def merge_prediction_shards(shards: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenates prediction records gathered from several ranks, without duplicated (video, phrase) pairs.

    A distributed sampler pads its last batches with repeated samples, so a (video, category) pair may
    come from two ranks; only the first shard holding a pair keeps its masklets.
    """
    owner: dict[tuple[Any, Any], int] = {}
    merged = []
    for shard_idx, shard in enumerate(shards):
        for record in shard:
            key = (record["video_id"], record["category_id"])
            if owner.setdefault(key, shard_idx) == shard_idx:
                merged.append(record)
    return merged


def _parse_masklet(
    ann: dict[str, Any], masklet_id: int, video: Video, where: str, score: float, is_crowd: bool
) -> Masklet:
    boxes = ann["bboxes"]
    segms = ann.get("segmentations") or [None] * len(boxes)
    areas = ann.get("areas") or [None] * len(boxes)
    if not len(boxes) == len(segms) == len(areas):
        raise ValueError(
            f"{where}: bboxes, segmentations and areas have lengths {len(boxes)}, {len(segms)}, {len(areas)}"
        )
    if len(boxes) != video.num_frames:
        raise ValueError(f"{where}: {len(boxes)} frames but video {video.video_id} has {video.num_frames}")
    return Masklet(
        masklet_id=masklet_id,
        video_id=video.video_id,
        category_id=int(ann["category_id"]),
        boxes_xywh=[None if b is None else list(b) for b in boxes],
        segmentations=[_compressed(s, video) for s in segms],
        areas=list(areas),
        score=score,
        is_crowd=is_crowd,
    )


def _compressed(rle: RLE | None, video: Video) -> RLE | None:
    """Compressed RLE with str counts (uncompressed integer-list counts are converted)."""
    if rle is None:
        return None
    counts = rle["counts"]
    if isinstance(counts, list):
        height, width = rle.get("size", (video.height, video.width))
        rle = coco_mask.frPyObjects(rle, height, width)
        counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def _require(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
