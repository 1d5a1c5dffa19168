"""`evaluate(model, dataset, group)`: frame-sharded video inference, post-processing, linking, metrics.

Whole videos are split across frame groups (`split_videos_for_eval`); inside a group the frames of a
video are split across its ranks (chunk by chunk, `VideoGroundingRunner`, with async prefetch). Each rank selects its frames' best detections before the gather (fixed-size top-k with
optional mask NMS, so every rank sends same-shaped tensors). After the gather every rank of the group
holds every frame; the group's first rank maps them to the original size, links them into masklets and
keeps the prediction records. The records of all groups are gathered to rank 0, deduplicated, written
once in the SA-Co/VEval prediction format and scored against the dataset's ground truth.

`mode="track"` replaces the per-frame detection and linking of a video by `sam3.eval.track_mode`
(detector on the detection frames, the memory tracker propagates); each video then runs in one
process (frame groups of one rank; videos are still split over the groups), and the records take the
same way to the metrics.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sam3.data.dataset import VideoGroundingDataset
from sam3.data.index import DatasetIndex
from sam3.data.sampler import split_videos_for_eval
from sam3.distributed.collectives import gather_objects_to_rank0
from sam3.distributed.env import get_rank
from sam3.distributed.frame_shard import FrameGroup
from sam3.distributed.video_inference import VideoGroundingRunner
from sam3.eval.linking import LinkingConfig, link_video
from sam3.eval.postprocess import FrameDetections, FramePredictions, MaskNMS, to_original_size
from sam3.eval.saco_format import merge_prediction_shards, parse_ground_truth, parse_predictions, write_predictions
from sam3.eval.track_mode import TrackConfig, encode_video, masklet_records, track_phrase
from sam3.eval.veval import evaluate_veval
from sam3.structures import DetectorOutput
from sam3.tracking import VideoTracker

logger = logging.getLogger(__name__)

EVAL_MODES = ("link", "track")


@dataclass(frozen=True)
class EvalConfig:
    """How predictions are selected before linking.

    Attributes:
        max_detections: detections kept per (frame, prompt), best score first (the gathered size).
        min_score: detections scoring at or below this are dropped (AP needs a low value).
        nms_iou_thresh: per-frame mask NMS threshold, None to disable.
        mask_logit_thresh: foreground where the resized mask logit exceeds this.
    """

    max_detections: int = 20
    min_score: float = 0.05
    nms_iou_thresh: float | None = 0.7
    mask_logit_thresh: float = 0.0


def evaluate(
    model: torch.nn.Module,
    dataset: VideoGroundingDataset,
    group: FrameGroup,
    *,
    out_path: str | Path,
    device: torch.device | str = "cpu",
    score_thresh: float = 0.5,
    config: EvalConfig = EvalConfig(),
    linking: LinkingConfig = LinkingConfig(),
    max_videos: int | None = None,
    async_gather: bool = True,
    gather_backbone_out: bool = False,
    mode: str = "link",
    track: TrackConfig = TrackConfig(),
) -> dict[str, float]:
    """Evaluates `model` on the whole videos of `dataset`; every rank calls it.

    Args:
        model: `Sam3ImageOnVideoMultiGPU` (not wrapped in DDP).
        dataset: an evaluation dataset (`train=False`) built for this rank's frame-group rank.
        group: this rank's frame group (`sam3.distributed.frame_shard.build_frame_group`).
        out_path: where rank 0 writes the predictions (SA-Co/VEval format) and, beside it, the metrics.
        device: the model's device.
        score_thresh: the operating point of cgF1, HOTA and TETA.
        config: detection selection before linking.
        linking: masklet linking rules.
        max_videos: evaluate only the first N videos (None = all).
        async_gather, gather_backbone_out: the frame-group schedule (`VideoGroundingRunner`).
        mode: "link" (detector on every frame, masklets by `linking`) or "track" (detector on the
            detection frames of `track`, masklets by the memory tracker; `sam3.eval.track_mode`).
        track: the track mode's settings.

    Returns:
        The dataset-level metrics on rank 0 (`video_mask_mAP_50_95`, `video_mask_demo_cgf1_micro_50_95`,
        ...), an empty dict on other ranks.
    """
    if dataset.train:
        raise ValueError("evaluate needs an evaluation dataset (train=False): whole videos, no augmentation")
    if mode not in EVAL_MODES:
        raise ValueError(f"eval.mode={mode!r}: expected one of {list(EVAL_MODES)}")
    if mode == "track" and group.group_size > 1:
        raise ValueError(
            f"eval.mode=track runs each video in one process, but the frame group has {group.group_size} ranks: "
            "set distributed.frame_group_size=1 (videos are then split over the ranks), or use eval.mode=link"
        )
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    num_videos = len(dataset) if max_videos is None else min(int(max_videos), len(dataset))
    lengths = [dataset.index.videos[i].length for i in range(num_videos)]
    my_videos = split_videos_for_eval(lengths, group.num_groups)[group.group_idx]
    records: list[dict[str, Any]] = []
    runner = VideoGroundingRunner(model, group, async_gather=async_gather, gather_backbone_out=gather_backbone_out)
    select = TopDetections(config)
    for video_idx in my_videos:
        if mode == "track":
            records += _track_records(model, dataset, video_idx, device, select, config, track)
        else:
            records += _video_records(runner, dataset, video_idx, device, select, config, linking)
    model.train(was_training)

    shards = gather_objects_to_rank0(records if group.group_rank == 0 else [], op="gather of predictions")
    if get_rank() != 0:
        return {}
    predictions = merge_prediction_shards(shards)
    out_path = Path(out_path)
    write_predictions(predictions, out_path)
    gt = parse_ground_truth(index_to_veval_gt(dataset.index, num_videos), source=dataset.index.source)
    results = evaluate_veval(gt, parse_predictions(predictions, gt, source=str(out_path)), score_thresh=score_thresh)
    metrics = {k: float(v) for k, v in results["dataset_results"].items()}
    out_path.with_name(out_path.stem + "_metrics.json").write_text(json.dumps(results, indent=1, default=float))
    logger.info(
        "evaluated %d videos in %.1f s: video mask mAP %.4f, cgF1 %.4f (predictions: %s)",
        num_videos,
        time.perf_counter() - start,
        metrics.get("video_mask_mAP_50_95", float("nan")),
        metrics.get("video_mask_demo_cgf1_micro_50_95", float("nan")),
        out_path,
    )
    return metrics


def index_to_veval_gt(index: DatasetIndex, num_videos: int | None = None) -> dict[str, Any]:
    """The SA-Co/VEval ground-truth dict of (the first `num_videos` videos of) any dataset index."""
    videos, annotations, np_pairs = [], [], []
    categories: dict[Any, str] = {}
    count = len(index) if num_videos is None else num_videos
    for video, masklets, pairs in zip(index.videos[:count], index.masklets[:count], index.pairs[:count], strict=True):
        videos.append(
            {
                "id": video.video_id,
                "video_name": video.name,
                "file_names": video.file_names,
                "height": video.height,
                "width": video.width,
                "length": video.length,
            }
        )
        for masklet in masklets:
            annotations.append(
                {
                    "id": masklet.ann_id,
                    "video_id": video.video_id,
                    "category_id": masklet.category_id,
                    "bboxes": masklet.boxes_xywh,
                    "segmentations": masklet.segmentations or [None] * video.length,
                    "iscrowd": int(masklet.is_crowd),
                }
            )
        for pair in pairs:
            categories[pair.category_id] = pair.phrase
            np_pairs.append(
                {
                    "video_id": video.video_id,
                    "category_id": pair.category_id,
                    "noun_phrase": pair.phrase,
                    "num_masklets": pair.num_masklets,
                }
            )
    return {
        "videos": videos,
        "annotations": annotations,
        "categories": [{"id": c, "name": name} for c, name in categories.items()],
        "video_np_pairs": np_pairs,
    }


def frame_predictions(
    tensors: dict[str, torch.Tensor], size: tuple[int, int], config: EvalConfig
) -> list[FramePredictions]:
    """One frame's gathered `TopDetections` output as each prompt's predictions in the original
    (height, width) frame, empty slots and scores at or below `config.min_score` dropped."""
    predictions = []
    for p in range(tensors["scores"].shape[0]):
        keep = tensors["scores"][p] > config.min_score
        detections = FrameDetections(
            scores=tensors["scores"][p][keep].cpu(),
            boxes_cxcywh=tensors["boxes_cxcywh"][p][keep].cpu(),
            mask_logits=tensors["mask_logits"][p][keep].cpu() if "mask_logits" in tensors else None,
            query_idx=keep.nonzero(as_tuple=True)[0].cpu(),
        )
        predictions.append(to_original_size(detections, size, config.mask_logit_thresh))
    return predictions


class TopDetections:
    """Per-frame hook run before the gather: each prompt's best `max_detections` queries (after NMS),
    as fixed-size tensors; empty slots have score -1."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self.nms = MaskNMS(config.nms_iou_thresh, config.mask_logit_thresh) if config.nms_iou_thresh else None

    def __call__(self, frame_idx: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = DetectorOutput(
            pred_logits=tensors["pred_logits"],
            pred_boxes=tensors["pred_boxes"],
            pred_boxes_xyxy=tensors["pred_boxes"],
            presence_logit_dec=tensors["presence_logit_dec"],
            pred_masks=tensors.get("pred_masks"),
        )
        scores = outputs.scores()  # (P, Q)
        k = min(self.config.max_detections, scores.shape[1])
        num_prompts = scores.shape[0]
        out_scores = scores.new_full((num_prompts, k), -1.0)
        out_boxes = outputs.pred_boxes.new_zeros(num_prompts, k, 4)
        masks = outputs.pred_masks
        out_masks = None if masks is None else masks.new_full((num_prompts, k, *masks.shape[-2:]), -1e4)
        for p in range(num_prompts):
            order = torch.argsort(scores[p], descending=True, stable=True)
            order = order[scores[p][order] > self.config.min_score]
            detections = FrameDetections(
                scores=scores[p][order],
                boxes_cxcywh=outputs.pred_boxes[p][order],
                mask_logits=None if masks is None else masks[p][order],
                query_idx=order,
            )
            if self.nms is not None:
                detections = self.nms(detections)
            n = min(len(detections), k)
            out_scores[p, :n] = detections.scores[:n]
            out_boxes[p, :n] = detections.boxes_cxcywh[:n]
            if out_masks is not None:
                out_masks[p, :n] = detections.mask_logits[:n]
        selected = {"scores": out_scores, "boxes_cxcywh": out_boxes}
        if out_masks is not None:
            selected["mask_logits"] = out_masks
        return selected


def _video_records(runner, dataset, video_idx, device, select, config, linking) -> list[dict[str, Any]]:
    sample = dataset[(0, video_idx)]
    video = dataset.index.videos[video_idx]
    own = sample.frame_indices.tolist()
    position = {t: i for i, t in enumerate(own)}
    images = sample.images

    def load_frame(t: int) -> torch.Tensor:
        return images[position[t]].to(device, non_blocking=True)

    frames = runner.run(
        load_frame, sample.num_frames, sample.prompts, postprocess=select, frame_shape=tuple(images.shape[1:])
    )
    if runner.group.group_rank != 0:
        for _ in frames:  # computes and sends this rank's frames; the group's first rank keeps them all
            pass
        return []
    size = (video.height, video.width)
    per_frame = [frame_predictions(tensors, size, config) for _, tensors in frames]  # forward order
    category_ids = _category_ids(dataset.index, video_idx, sample.prompts)
    return link_video(video.video_id, category_ids, per_frame, size, linking)


def _track_records(model, dataset, video_idx, device, select, config, track) -> list[dict[str, Any]]:
    sample = dataset[(0, video_idx)]  # a group of one: every frame
    video = dataset.index.videos[video_idx]
    size = (video.height, video.width)
    images = sample.images
    encoded = encode_video(
        model,
        lambda t: images[t].to(device, non_blocking=True),
        sample.num_frames,
        sample.prompts,
        size,
        select=select,
        selection=config,
        config=track,
    )
    video_tracker = VideoTracker(model.tracker)  # no backbone: every frame's features are cached
    records = []
    for p, category_id in enumerate(_category_ids(dataset.index, video_idx, sample.prompts)):
        detections = {t: per_prompt[p] for t, per_prompt in encoded.predictions.items()}
        masklets = track_phrase(video_tracker, encoded.features, detections, sample.num_frames, size, track)
        records += masklet_records(video.video_id, category_id, masklets)
    return records


def _category_ids(index: DatasetIndex, video_idx: int, prompts: list[str]) -> list[Any]:
    by_phrase = {pair.phrase: pair.category_id for pair in index.pairs[video_idx]}
    missing = [p for p in prompts if p not in by_phrase]
    if missing:
        raise ValueError(
            f"{index.source}: video {index.videos[video_idx].video_id} has no category for prompts {missing}"
        )
    return [by_phrase[p] for p in prompts]
