"""Annotation readers: SA-Co/VEval, YouTube-VIS and COCO image JSON, all into one `DatasetIndex`.

* A video record lists its frame files in `file_names`, or names one video file (.mp4, .webm, ...)
  in `video_file` with its frame count in `length` (SA-Co/VEval and YouTube-VIS).
* SA-Co/VEval: `videos`, `annotations` (masklets with per-frame RLE `segmentations` and xywh
  `bboxes`, null where not visible), `categories` (name = noun phrase) and `video_np_pairs`
  (num_masklets 0 = negative pair). Every pair is exhaustive.
* YouTube-VIS (2019/2021): category names are the prompts; every category absent from a video becomes
  a negative pair. Polygon and uncompressed-RLE segmentations are converted to compressed RLE.
* COCO image JSON (e.g. a Roboflow export): each image is a one-frame video. A category that only
  names the supercategory of the others (Roboflow's category 0) and has no annotation is not a prompt.

Every record is checked; bad input raises `DataError` naming file, record and field. With
`on_error="skip"` a bad record is dropped instead, logged and counted in `DatasetIndex.num_skipped`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pycocotools import mask as coco_mask

from sam3.data.index import VIDEO_SUFFIXES, DataError, DatasetIndex, Masklet, PhrasePair, VideoRecord
from sam3.ops.masks import RLE, rle_to_box_xywh

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
FORMATS = ("saco_veval", "ytvis", "coco")
# A box may overshoot the image by this many pixels (rounding in exported annotations).
BOX_TOLERANCE_PX = 1.0


def load_annotations(
    path: str | Path,
    format: str = "auto",
    on_error: OnError = "raise",
    is_exhaustive: bool = True,
) -> DatasetIndex:
    """Reads an annotation file in any supported format.

    Args:
        path: the JSON file.
        format: one of FORMATS, or "auto" to detect it from the top-level keys (`video_np_pairs` ->
            SA-Co/VEval, `videos` -> YouTube-VIS, `images` -> COCO).
        on_error: "raise" on the first bad record, or "skip" bad records (logged and counted).
        is_exhaustive: for YouTube-VIS and COCO, whether annotated categories are exhaustive.
    """
    data = load_json(path)
    if format == "auto":
        format = detect_format(data, path)
    if format == "saco_veval":
        return read_saco_veval(path, on_error=on_error, data=data)
    if format == "ytvis":
        return read_ytvis(path, on_error=on_error, is_exhaustive=is_exhaustive, data=data)
    if format == "coco":
        return read_coco(path, on_error=on_error, is_exhaustive=is_exhaustive, data=data)
    raise ValueError(f"unknown annotation format {format!r}; expected 'auto' or one of {FORMATS}")


def load_json(path: str | Path) -> dict[str, Any]:
    """Parses a JSON file whose top level is an object, with errors that name the file and position."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(path, None, None, "annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(
            path, None, None, f"malformed or truncated JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, None, f"the top level must be a JSON object, got {type(data).__name__}")
    return data


def detect_format(data: dict[str, Any], path: str | Path) -> str:
    """The format of parsed annotation JSON, from its top-level keys."""
    if "video_np_pairs" in data:
        return "saco_veval"
    if "videos" in data:
        return "ytvis"
    if "images" in data:
        return "coco"
    raise DataError(
        path,
        None,
        None,
        f"cannot tell the format from the top-level keys {sorted(data)}: expected 'video_np_pairs' "
        "(SA-Co/VEval), 'videos' (YouTube-VIS) or 'images' (COCO)",
    )


def read_saco_veval(path: str | Path, on_error: OnError = "raise", data: dict[str, Any] | None = None) -> DatasetIndex:
    """Reads SA-Co/VEval ground truth (see the module docstring); `data` skips re-parsing the file."""
    reader = _Reader(path, on_error, load_json(path) if data is None else data)
    categories = reader.categories()
    videos = reader.videos("videos")
    video_pos = {video.video_id: i for i, video in enumerate(videos)}
    masklets: list[list[Masklet]] = [[] for _ in videos]
    counts: Counter = Counter()
    skipped_keys: set[tuple[Any, Any]] = set()
    for ann in reader.records("annotations"):
        record = _ann_name(ann)
        try:
            pos = video_pos[reader.lookup(ann, "video_id", video_pos, record, "video")]
            category_id = reader.lookup(ann, "category_id", categories, record, "category")
            phrase = ann.get("noun_phrase", categories[category_id])
            masklet = reader.video_masklet(ann, videos[pos], category_id, phrase)
        except DataError as e:
            reader.skip_or_raise(e)
            if isinstance(ann, dict):
                skipped_keys.add((ann.get("video_id"), ann.get("category_id")))
            continue
        masklets[pos].append(masklet)
        counts[(videos[pos].video_id, category_id)] += 1

    pairs: list[list[PhrasePair]] = [[] for _ in videos]
    paired: set[tuple[Any, Any]] = set()
    for raw in reader.records("video_np_pairs"):
        record = f"video_np_pair {raw.get('id', '?')}" if isinstance(raw, dict) else "video_np_pair ?"
        try:
            pos = video_pos[reader.lookup(raw, "video_id", video_pos, record, "video")]
            category_id = reader.lookup(raw, "category_id", categories, record, "category")
            phrase = reader.field(raw, "noun_phrase", str, record)
            num_masklets = reader.field(raw, "num_masklets", int, record)
            key = (videos[pos].video_id, category_id)
            found = counts.get(key, 0)
            exhaustive = True
            if found != num_masklets:
                if key not in skipped_keys:
                    raise DataError(
                        path,
                        record,
                        "num_masklets",
                        f"says {num_masklets} masklets but the annotations hold {found} for video "
                        f"{key[0]} and category {category_id}",
                    )
                if found == 0:
                    raise DataError(path, record, "num_masklets", "every masklet of this pair was skipped")
                exhaustive = False
        except DataError as e:
            reader.skip_or_raise(e)
            continue
        paired.add(key)
        pairs[pos].append(PhrasePair(category_id, phrase, found, is_exhaustive=exhaustive))

    for pos, video in enumerate(videos):
        unpaired = [m for m in masklets[pos] if (video.video_id, m.category_id) not in paired]
        for m in unpaired:
            reader.skip_or_raise(
                DataError(
                    path,
                    _ann_name({"id": m.ann_id}),
                    "category_id",
                    f"no video_np_pairs entry for video {video.video_id} and category {m.category_id}",
                )
            )
        masklets[pos] = [m for m in masklets[pos] if (video.video_id, m.category_id) in paired]
    return reader.index("saco_veval", videos, masklets, pairs, list(categories.values()), has_masks=True)


def read_ytvis(
    path: str | Path,
    on_error: OnError = "raise",
    is_exhaustive: bool = True,
    data: dict[str, Any] | None = None,
) -> DatasetIndex:
    """Reads YouTube-VIS JSON (see the module docstring); `data` skips re-parsing the file."""
    reader = _Reader(path, on_error, load_json(path) if data is None else data)
    categories = reader.categories()
    videos = reader.videos("videos")
    masklets = reader.masklets_per_video(
        reader.records("annotations"), videos, categories, "video_id", "video", reader.video_masklet
    )
    pairs = _category_pairs(masklets, categories, is_exhaustive)
    return reader.index("ytvis", videos, masklets, pairs, list(categories.values()), has_masks=True)


def read_coco(
    path: str | Path,
    on_error: OnError = "raise",
    is_exhaustive: bool = True,
    data: dict[str, Any] | None = None,
) -> DatasetIndex:
    """Reads COCO image JSON, one one-frame video per image; `data` skips re-parsing the file."""
    reader = _Reader(path, on_error, load_json(path) if data is None else data)
    categories = reader.categories()
    videos = reader.videos("images")
    raw_anns = reader.records("annotations")
    has_masks = any(isinstance(a, dict) and a.get("segmentation") for a in raw_anns)
    masklets = reader.masklets_per_video(
        raw_anns, videos, categories, "image_id", "image", partial(reader.image_masklet, has_masks=has_masks)
    )
    used = {m.category_id for video_masklets in masklets for m in video_masklets}
    parents = {c.get("supercategory") for c in reader.data["categories"] if isinstance(c, dict)}
    prompts = {cid: name for cid, name in categories.items() if cid in used or name not in parents}
    pairs = _category_pairs(masklets, prompts, is_exhaustive)
    return reader.index("coco", videos, masklets, pairs, list(prompts.values()), has_masks=has_masks)


class _Reader:
    """Field access and checks shared by the readers; collects skipped records."""

    def __init__(self, path: str | Path, on_error: OnError, data: dict[str, Any]):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = str(path)
        self.on_error = on_error
        self.data = data
        self.num_skipped = 0

    def skip_or_raise(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.num_skipped += 1
        logger.warning("skipping bad record: %s", error)

    def masklets_per_video(
        self,
        anns: list[Any],
        videos: list[VideoRecord],
        categories: dict[Any, str],
        video_field: str,
        video_kind: str,
        make_masklet: Callable[..., Masklet],
    ) -> list[list[Masklet]]:
        """Each annotation as a masklet of its video (found by `video_field`), in file order per video;
        `make_masklet(ann, video, category_id, phrase)` builds it. Bad records are skipped or raised."""
        video_pos = {video.video_id: i for i, video in enumerate(videos)}
        masklets: list[list[Masklet]] = [[] for _ in videos]
        for ann in anns:
            record = _ann_name(ann)
            try:
                pos = video_pos[self.lookup(ann, video_field, video_pos, record, video_kind)]
                category_id = self.lookup(ann, "category_id", categories, record, "category")
                masklet = make_masklet(ann, videos[pos], category_id, categories[category_id])
            except DataError as e:
                self.skip_or_raise(e)
                continue
            masklets[pos].append(masklet)
        return masklets

    def index(
        self,
        format: str,
        videos: list[VideoRecord],
        masklets: list[list[Masklet]],
        pairs: list[list[PhrasePair]],
        phrases: list[str],
        has_masks: bool,
    ) -> DatasetIndex:
        if self.num_skipped:
            logger.warning("%s: skipped %d bad records", self.path, self.num_skipped)
        info = self.data.get("info")
        return DatasetIndex(
            source=self.path,
            format=format,
            videos=videos,
            masklets=masklets,
            pairs=pairs,
            phrases=phrases,
            has_masks=has_masks,
            num_skipped=self.num_skipped,
            info=info if isinstance(info, dict) else {},
        )

    def records(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if not isinstance(value, list):
            problem = "missing" if value is None else f"must be a list, got {type(value).__name__}"
            raise DataError(self.path, None, key, f"top-level list {problem}")
        return value

    def field(self, record: Any, key: str, kind: type | tuple[type, ...], name: str) -> Any:
        if not isinstance(record, dict):
            raise DataError(self.path, name, None, f"must be a JSON object, got {type(record).__name__}")
        if key not in record:
            raise DataError(self.path, name, key, "missing")
        value = record[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise DataError(self.path, name, key, f"expected {expected}, got {value!r}")
        return value

    def lookup(self, record: Any, key: str, table: dict[Any, Any], name: str, what: str) -> Any:
        """The id in `record[key]`, checked to be a key of `table`."""
        value = self.field(record, key, (int, str), name)
        if value not in table:
            raise DataError(self.path, name, key, f"unknown {what} id {value!r}")
        return value

    def categories(self) -> dict[Any, str]:
        categories: dict[Any, str] = {}
        for raw in self.records("categories"):
            name = f"category {raw.get('id', '?')}" if isinstance(raw, dict) else "category ?"
            category_id = self.field(raw, "id", (int, str), name)
            if category_id in categories:
                raise DataError(self.path, name, "id", "duplicate category id")
            categories[category_id] = self.field(raw, "name", str, name)
        return categories

    def videos(self, key: str) -> list[VideoRecord]:
        videos: list[VideoRecord] = []
        seen: set[Any] = set()
        for raw in self.records(key):
            kind = "image" if key == "images" else "video"
            name = f"{kind} {raw.get('id', '?')}" if isinstance(raw, dict) else f"{kind} ?"
            try:
                video = self._video(raw, name, single_frame=key == "images")
                if video.video_id in seen:
                    raise DataError(self.path, name, "id", f"duplicate {kind} id")
            except DataError as e:
                self.skip_or_raise(e)
                continue
            seen.add(video.video_id)
            videos.append(video)
        return videos

    def _video(self, raw: Any, name: str, single_frame: bool) -> VideoRecord:
        video_id = self.field(raw, "id", (int, str), name)
        height = self.field(raw, "height", int, name)
        width = self.field(raw, "width", int, name)
        if height <= 0 or width <= 0:
            raise DataError(self.path, name, "height", f"frame size must be positive, got {height}x{width} (HxW)")
        if single_frame:
            file_name = self.field(raw, "file_name", str, name)
            return VideoRecord(video_id, file_name, [file_name], height, width)
        if "video_file" in raw:  # the frames are in one video file: every frame's name is the file's
            video_file = self.field(raw, "video_file", str, name)
            if not video_file.lower().endswith(VIDEO_SUFFIXES):
                raise DataError(
                    self.path, name, "video_file", f"{video_file!r} is not a video file ({', '.join(VIDEO_SUFFIXES)})"
                )
            length = self.field(raw, "length", int, name)
            if length <= 0:
                raise DataError(self.path, name, "length", f"must be positive, got {length}")
            video_name = raw.get("video_name") or Path(video_file).stem
            return VideoRecord(video_id, str(video_name), [video_file] * length, height, width)
        file_names = self.field(raw, "file_names", list, name)
        if not file_names or not all(isinstance(f, str) for f in file_names):
            raise DataError(self.path, name, "file_names", "must be a non-empty list of frame paths")
        if "length" in raw and raw["length"] != len(file_names):
            raise DataError(
                self.path, name, "length", f"is {raw['length']} but file_names lists {len(file_names)} frames"
            )
        video_name = raw.get("video_name") or str(Path(file_names[0]).parent)
        return VideoRecord(video_id, str(video_name), list(file_names), height, width)

    def video_masklet(self, ann: dict[str, Any], video: VideoRecord, category_id: Any, phrase: str) -> Masklet:
        """A video annotation with per-frame `segmentations` and optional per-frame `bboxes`."""
        name = _ann_name(ann)
        segs = self.field(ann, "segmentations", list, name)
        self._check_length(segs, "segmentations", video, name)
        rles = [self._segmentation(s, video, name, f"segmentations[{t}]") for t, s in enumerate(segs)]
        raw_boxes = ann.get("bboxes")
        if raw_boxes is None:
            raw_boxes = [None] * video.length
        elif not isinstance(raw_boxes, list):
            raise DataError(self.path, name, "bboxes", f"expected a list, got {raw_boxes!r}")
        self._check_length(raw_boxes, "bboxes", video, name)
        boxes: list[list[float] | None] = []
        for t, (rle, box) in enumerate(zip(rles, raw_boxes, strict=True)):
            if box is not None and rle is None:
                raise DataError(self.path, name, f"bboxes[{t}]", "a box is given where the segmentation is null")
            if box is None and rle is not None:
                box = rle_to_box_xywh([rle])[0].tolist()
            boxes.append(None if box is None else self._box(box, video, name, f"bboxes[{t}]"))
        return Masklet(ann.get("id"), category_id, phrase, boxes, rles, is_crowd=bool(ann.get("iscrowd", 0)))

    def image_masklet(
        self, ann: dict[str, Any], video: VideoRecord, category_id: Any, phrase: str, has_masks: bool
    ) -> Masklet:
        """A COCO image annotation (`bbox`, `segmentation`) as a one-frame masklet."""
        name = _ann_name(ann)
        rle = None
        if has_masks:
            seg = ann.get("segmentation")
            if not seg:
                raise DataError(
                    self.path, name, "segmentation", "missing or empty while other annotations of the file have masks"
                )
            rle = self._segmentation(seg, video, name, "segmentation")
        box = ann.get("bbox")
        if box is None:
            if rle is None:
                raise DataError(self.path, name, "bbox", "missing (and no segmentation to derive it from)")
            box = rle_to_box_xywh([rle])[0].tolist()
        box = self._box(box, video, name, "bbox")
        return Masklet(
            ann.get("id"), category_id, phrase, [box], None if rle is None else [rle], bool(ann.get("iscrowd", 0))
        )

    def _check_length(self, values: list[Any], key: str, video: VideoRecord, name: str) -> None:
        if len(values) != video.length:
            raise DataError(
                self.path, name, key, f"has {len(values)} entries but video {video.video_id} has {video.length} frames"
            )

    def _segmentation(self, seg: Any, video: VideoRecord, name: str, key: str) -> RLE | None:
        """Compressed RLE (str counts) of a segmentation: RLE (compressed or not) or polygons."""
        if seg is None:
            return None
        height, width = video.height, video.width
        if isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, list) and len(size) == 2):
                raise DataError(self.path, name, f"{key}.size", f"expected [height, width], got {size!r}")
            if list(size) != [height, width]:
                raise DataError(
                    self.path,
                    name,
                    f"{key}.size",
                    f"RLE size {size} differs from video {video.video_id} size [{height}, {width}] (HxW)",
                )
            if isinstance(counts, str):
                return {"size": [height, width], "counts": counts}
            if isinstance(counts, list):
                if sum(counts) != height * width:
                    raise DataError(
                        self.path, name, f"{key}.counts", f"runs sum to {sum(counts)}, not {height}*{width}"
                    )
                rle = coco_mask.frPyObjects(seg, height, width)
                return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            raise DataError(self.path, name, f"{key}.counts", f"expected a string or a list, got {counts!r}")
        if isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            polygons = [p for p in seg if p]
            if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
                raise DataError(self.path, name, key, "polygons need an even number (>= 6) of coordinates each")
            rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
            return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        raise DataError(self.path, name, key, f"expected an RLE object, a list of polygons or null, got {seg!r:.80}")

    def _box(self, box: Any, video: VideoRecord, name: str, key: str) -> list[float]:
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(self.path, name, key, f"expected [x, y, w, h], got {box!r}")
        x, y, w, h = (float(v) for v in box)
        tol = BOX_TOLERANCE_PX
        if w < 0 or h < 0 or x < -tol or y < -tol or x + w > video.width + tol or y + h > video.height + tol:
            raise DataError(
                self.path,
                name,
                key,
                f"box [x, y, w, h] = {box} lies outside the {video.width}x{video.height} (WxH) image of "
                f"video {video.video_id} (x + w = {x + w:g}, y + h = {y + h:g})",
            )
        return [x, y, w, h]


def _ann_name(ann: Any) -> str:
    return f"annotation {ann.get('id', '?')}" if isinstance(ann, dict) else "annotation ?"


def _category_pairs(
    masklets: list[list[Masklet]], categories: dict[Any, str], is_exhaustive: bool
) -> list[list[PhrasePair]]:
    """One pair per category per video: positive where annotated, negative everywhere else."""
    pairs = []
    for video_masklets in masklets:
        counts: dict[Any, int] = defaultdict(int)
        for m in video_masklets:
            counts[m.category_id] += 1
        pairs.append([PhrasePair(cid, name, counts.get(cid, 0), is_exhaustive) for cid, name in categories.items()])
    return pairs
