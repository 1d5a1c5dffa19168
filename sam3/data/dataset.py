"""The video grounding dataset: (epoch, clip index) -> this rank's frames of one clip with its prompts.

Everything random (frames, prompts, augmentation) comes from `clip_rng(seed, epoch, clip index)` and
is drawn from annotations alone, before any decoding, so the ranks of a frame group agree without
communicating. Each rank then decodes and transforms only its own frames (`frames_of_rank`).
Training: clip index i draws T frames at a random stride from video i // clips_per_video.
Evaluation: clip index = video index, and the clip is the whole video.

A frame or mask that cannot be loaded raises `DataError` naming the annotation file, the video, the
frame and the frame file or annotation; with `on_bad_sample="report"` the clip comes back as a
`BadClip` instead, for the trainer to skip on every rank (`data.max_bad_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from sam3.data.collate import BadClip, ClipSample
from sam3.data.frames import FrameReader
from sam3.data.index import DataError, DatasetIndex, Masklet, VideoRecord
from sam3.data.prompts import PromptConfig, select_prompts
from sam3.data.readers import OnError, load_annotations
from sam3.data.sampler import ClipKey, clip_rng, sample_clip_frames
from sam3.data.transforms import AugmentConfig, ClipTransform
from sam3.distributed.frame_layout import frames_of_rank
from sam3.ops.boxes import box_xywh_to_xyxy, box_xyxy_to_cxcywh, normalize_boxes
from sam3.ops.masks import rle_decode_transposed, rle_problem

OnBadSample = Literal["raise", "report"]


@dataclass(frozen=True)
class ClipSamplingConfig:
    """How training clips are cut from videos.

    Attributes:
        num_frames: T, frames per clip (fewer for shorter videos).
        stride_range: (min, max) step between consecutive clip frames, shrunk for short videos.
        reverse_prob: probability of reversing time.
        clips_per_video: clips drawn from each video per epoch.
    """

    num_frames: int = 8
    stride_range: tuple[int, int] = (1, 1)
    reverse_prob: float = 0.0
    clips_per_video: int = 1


class VideoGroundingDataset(Dataset):
    """Clips of a `DatasetIndex`, keyed by (epoch, clip index), restricted to one rank's frames.

    Args:
        index: the annotations (any reader).
        transform: the clip transform (its `augment` decides training augmentation).
        frames_root: folder the frame `file_names` are relative to; default: the annotation file's folder.
        train: sample T-frame clips (True) or yield whole videos (False).
        clip_sampling: clip length, stride and reversal (training only).
        prompts: prompt caps and negatives; default: no caps, shuffled in training only.
        group_size: F, ranks in this rank's frame group.
        group_rank: this rank's index in its frame group; it holds frames t with t mod F == group_rank.
        seed: the seed of every clip's random stream (the same on every rank).
        load_masks: decode the masks (False gives box-only targets, e.g. for evaluation of long videos,
            whose metrics read the masks from the annotation file).
        on_bad_sample: "raise" a `DataError` for a frame or mask that cannot be loaded, or "report" it
            by returning a `BadClip` (the trainer's `data.max_bad_samples`).
    """

    def __init__(
        self,
        index: DatasetIndex,
        *,
        transform: ClipTransform,
        frames_root: str | Path | None = None,
        train: bool = True,
        clip_sampling: ClipSamplingConfig = ClipSamplingConfig(),
        prompts: PromptConfig | None = None,
        group_size: int = 1,
        group_rank: int = 0,
        seed: int = 0,
        load_masks: bool = True,
        on_bad_sample: OnBadSample = "raise",
    ):
        if on_bad_sample not in ("raise", "report"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'report', got {on_bad_sample!r}")
        if not 0 <= group_rank < group_size:
            raise ValueError(f"group_rank must be in [0, group_size={group_size}), got {group_rank}")
        if len(index) == 0:
            raise ValueError(f"{index.source}: the dataset has no videos")
        self.index = index
        self.transform = transform
        self.frames_root = Path(index.source).parent if frames_root is None else Path(frames_root)
        self.frames = FrameReader(self.frames_root, index.source)
        self.train = train
        self.clip_sampling = clip_sampling
        self.prompts = PromptConfig(shuffle=train) if prompts is None else prompts
        self.group_size = group_size
        self.group_rank = group_rank
        self.seed = seed
        self.load_masks = load_masks
        self.on_bad_sample = on_bad_sample
        # the pool of `prompts.num_sampled_negatives`; `sam3.data.mixed` may widen it to every dataset's phrases
        self.negative_phrases = list(index.phrases)

    def __len__(self) -> int:
        return len(self.index) * (self.clip_sampling.clips_per_video if self.train else 1)

    def video_position(self, clip_idx: int) -> int:
        """The position in the index of the video clip `clip_idx` comes from."""
        return clip_idx // self.clip_sampling.clips_per_video if self.train else clip_idx

    def __getitem__(self, key: ClipKey) -> ClipSample | BadClip:
        return self.load_clip(key)

    def load_clip(self, key: ClipKey, draw: int = 0) -> ClipSample | BadClip:
        """Clip `key` = (epoch, clip index), its randomness from the stream `clip_rng(seed, epoch, clip index,
        draw)`; another `draw` (`sam3.data.mixed`: a repeat within the epoch) gives other frames, prompts
        and augmentation."""
        try:
            return self._load(key, draw)
        except DataError as e:
            if self.on_bad_sample == "raise":
                raise
            video = self.index.videos[self.video_position(key[1])]
            return BadClip.from_error(e, clip_id=key, video_id=video.video_id)

    def _load(self, key: ClipKey, draw: int) -> ClipSample:
        epoch, clip_idx = key
        if not 0 <= clip_idx < len(self):
            raise IndexError(f"clip index {clip_idx} out of range for {len(self)} clips")
        rng = clip_rng(self.seed, epoch, clip_idx, draw)
        pos = self.video_position(clip_idx)
        video, masklets = self.index.videos[pos], self.index.masklets[pos]
        if self.train:
            cfg = self.clip_sampling
            frames = sample_clip_frames(video.length, cfg.num_frames, cfg.stride_range, cfg.reverse_prob, rng)
        else:
            frames = list(range(video.length))
        prompts = select_prompts(self.index.pairs[pos], masklets, frames, self.prompts, rng, self.negative_phrases)
        instances = [masklets[i] for prompt in prompts for i in prompt.masklets]
        prompt_instances, start = [], 0
        for prompt in prompts:
            prompt_instances.append(list(range(start, start + len(prompt.masklets))))
            start += len(prompt.masklets)

        # Every frame's boxes, for parameters every rank draws alike.
        num_inst, none = len(instances), [0.0, 0.0, 0.0, 0.0]
        visible_rows = [[m.is_visible(f) for m in instances] for f in frames]
        box_rows = [
            [m.boxes_xywh[f] if v else none for m, v in zip(instances, row, strict=True)]
            for f, row in zip(frames, visible_rows, strict=True)
        ]
        clip_visible = torch.tensor(visible_rows, dtype=torch.bool).reshape(len(frames), num_inst)  # (T, N)
        clip_boxes = torch.tensor(box_rows, dtype=torch.float32).reshape(len(frames), num_inst, 4)  # (T, N, 4) xywh
        clip_boxes = box_xywh_to_xyxy(clip_boxes)
        params = self.transform.draw(rng, video.height, video.width, clip_boxes[clip_visible])

        own = frames_of_rank(len(frames), self.group_size, self.group_rank)
        own_frames = [frames[t] for t in own]
        pixels = self.frames.read(video, own_frames)  # this rank's frames only
        masks = None
        if self.load_masks and self.index.has_masks:
            masks = self._masks(instances, own_frames, video)
        images, boxes_xyxy, masks = self.transform(pixels, clip_boxes[own], masks, params)

        size = self.transform.image_size
        has_area = (boxes_xyxy[..., 2] > boxes_xyxy[..., 0]) & (boxes_xyxy[..., 3] > boxes_xyxy[..., 1])
        visible = clip_visible[own] & has_area  # (F, N)
        if masks is not None:
            visible &= masks.flatten(-2).any(-1)
            masks &= visible[..., None, None]
        boxes = normalize_boxes(box_xyxy_to_cxcywh(boxes_xyxy), size, size) * visible[..., None]
        return ClipSample(
            images=images,
            frame_indices=torch.tensor(own, dtype=torch.int64),
            num_frames=len(frames),
            prompts=[self.transform.phrase(p.phrase, params) for p in prompts],
            prompt_instances=prompt_instances,
            is_exhaustive=[p.is_exhaustive for p in prompts],
            is_positive=[p.is_positive for p in prompts],
            boxes_cxcywh=boxes,
            is_visible=visible,
            masks=masks,
            video_id=video.video_id,
            orig_size=(video.height, video.width),
            file_names=[video.file_names[f] for f in own_frames],
            clip_id=key,
        )

    def _masks(self, instances: list[Masklet], frames: list[int], video: VideoRecord) -> torch.Tensor:
        """(F, N, H, W) bool masks of `instances` on video frames `frames`, empty where not visible;
        an RLE whose runs do not cover the frame raises `DataError` (pycocotools would decode garbage).

        Stored column by column (a transposed view, strides (N W H, W H, 1, H)), as RLE decodes: the
        transform's resize shrinks the width first and reads columns, so no row-major copy is made.
        """
        columns = torch.zeros(len(frames), len(instances), video.width, video.height, dtype=torch.bool)
        where, rles = [], []
        for f, frame in enumerate(frames):
            for n, masklet in enumerate(instances):
                rle = masklet.segmentations[frame]
                if rle is not None and masklet.is_visible(frame):
                    problem = rle_problem(rle)
                    if problem is not None:
                        raise DataError(
                            self.index.source,
                            f"video {video.video_id} frame {frame} annotation {masklet.ann_id}",
                            f"segmentations[{frame}].counts",
                            problem,
                        )
                    where.append((f, n))
                    rles.append(rle)
        if rles:
            decoded = rle_decode_transposed(rles)  # (K, W, H)
            for k, (f, n) in enumerate(where):
                columns[f, n] = decoded[k]
        return columns.transpose(-1, -2)


def build_video_dataset(
    annotations: str | Path,
    *,
    image_size: int,
    frames_root: str | Path | None = None,
    train: bool = True,
    augment: AugmentConfig | None = None,
    letterbox: bool = False,
    clip_sampling: ClipSamplingConfig = ClipSamplingConfig(),
    prompts: PromptConfig | None = None,
    format: str = "auto",
    on_error: OnError = "raise",
    is_exhaustive: bool = True,
    group_size: int = 1,
    group_rank: int = 0,
    seed: int = 0,
    load_masks: bool = True,
    missing_hint: str | None = None,
    on_bad_sample: OnBadSample = "raise",
) -> VideoGroundingDataset:
    """Reads an annotation file (any format) and wraps it as a dataset; arguments as in the pieces, and
    `missing_hint`: how to obtain the data, said when the annotation file does not exist."""
    if missing_hint is not None and not Path(annotations).is_file():
        raise FileNotFoundError(f"annotation file {annotations} not found; {missing_hint}")
    index = load_annotations(annotations, format=format, on_error=on_error, is_exhaustive=is_exhaustive)
    transform = ClipTransform(image_size, augment=augment if train else None, letterbox=letterbox)
    return VideoGroundingDataset(
        index,
        transform=transform,
        frames_root=frames_root,
        train=train,
        clip_sampling=clip_sampling,
        prompts=prompts,
        group_size=group_size,
        group_rank=group_rank,
        seed=seed,
        load_masks=load_masks,
        on_bad_sample=on_bad_sample,
    )
