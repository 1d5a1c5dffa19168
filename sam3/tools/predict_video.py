"""Detect, segment and link every instance of one or more text prompts through a video file.

    python -m sam3.tools.predict_video --checkpoint ckpt.pt --video in.mp4 --prompt "red car" \\
        [--prompt "person" ...] --out overlay.mp4 [--json predictions.json]
    torchrun --nproc-per-node 4 -m sam3.tools.predict_video ...   # frames spread over 4 ranks

The detector runs on every frame (`VideoGroundingRunner`: frame t on rank t mod W, each rank decoding
only its own frames from the file), per-frame detections are mapped to the original size and linked
into masklets (`sam3.eval.linking`) like `evaluate`'s "link" mode. Rank 0 writes the masklets in the
SA-Co/VEval prediction format (`--json`; video_id 0, category_id = position of the prompt from 1,
`noun_phrase` added) and the overlay video (`--out`: masks, boxes, masklet ids and scores of the
masklets scoring above `--threshold`), and prints one line per masklet. The model is chosen as in
`sam3.tools.predict`. Progress is logged every `--log-every` frames.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from PIL import Image

from sam3.data.video_file import VideoFile, write_video
from sam3.distributed.env import init_distributed, setup_logging, teardown_distributed
from sam3.distributed.frame_shard import FrameGroup, build_frame_group
from sam3.distributed.video_inference import VideoGroundingRunner
from sam3.eval.evaluate import EvalConfig, TopDetections, frame_predictions
from sam3.eval.linking import LinkingConfig, link_video
from sam3.eval.saco_format import write_predictions
from sam3.model.sam3_image import Sam3Image
from sam3.model_builder import model_names
from sam3.ops.masks import rle_decode
from sam3.tools.predict import DEFAULT_MODEL, draw_overlay, load_model, model_input

logger = logging.getLogger(__name__)

VIDEO_ID = 0


def predict_video(
    model: Sam3Image,
    video: VideoFile,
    prompts: list[str],
    input_size: int,
    group: FrameGroup,
    *,
    config: EvalConfig = EvalConfig(),
    linking: LinkingConfig = LinkingConfig(),
    log_every: int = 50,
) -> list[dict[str, Any]]:
    """Masklets of every prompt in `video`; every rank of `group` calls it and decodes only its frames.

    Returns:
        On the group's first rank, SA-Co/VEval prediction records (`video_id` 0, `category_id` the
        prompt's position from 1, `noun_phrase`, `score`, per-frame `bboxes` absolute xywh,
        `segmentations` RLE and `areas`, None where absent); an empty list on the other ranks.
    """
    device = next(model.parameters()).device
    runner = VideoGroundingRunner(model, group)
    num_frames, size = video.num_frames, (video.height, video.width)
    frames = runner.run(
        lambda t: model_input(video.frame(t), input_size, device),
        num_frames,
        prompts,
        postprocess=TopDetections(config),
        frame_shape=(3, input_size, input_size),
    )
    start = time.perf_counter()
    per_frame = []
    for done, (_, tensors) in enumerate(frames, start=1):  # every rank drains: it issues the gathers
        if group.group_rank == 0:
            per_frame.append(frame_predictions(tensors, size, config))
        if done % log_every == 0 or done == num_frames:
            rate = done / max(time.perf_counter() - start, 1e-9)
            logger.info("frame %d/%d (%.1f frames/s)", done, num_frames, rate)
    if group.group_rank != 0:
        return []
    category_ids = list(range(1, len(prompts) + 1))
    records = link_video(VIDEO_ID, category_ids, per_frame, size, linking)
    for record in records:
        record["noun_phrase"] = prompts[record["category_id"] - 1]
    return records


def write_overlay(video_path: Path, records: list[dict[str, Any]], out: Path, threshold: float) -> int:
    """Writes `video_path` with the masklets scoring above `threshold` drawn (ids = position in `records`
    from 1); returns the number of frames written."""
    shown = [(i + 1, r) for i, r in enumerate(records) if r["score"] > threshold]
    with VideoFile(video_path) as video:

        def frames():
            for t in range(video.num_frames):
                image = Image.fromarray(video.frame(t).permute(1, 2, 0).numpy())
                ids, scores, boxes, masks = [], [], [], []
                for masklet_id, record in shown:
                    box = record["bboxes"][t]
                    if box is None:
                        continue
                    ids.append(masklet_id)
                    scores.append(record["score"])
                    boxes.append([box[0], box[1], box[0] + box[2], box[1] + box[3]])
                    rle = record["segmentations"][t]
                    masks.append(
                        rle_decode([rle])[0] if rle else torch.zeros(video.height, video.width, dtype=torch.bool)
                    )
                detections = {
                    "scores": torch.tensor(scores),
                    "boxes_xyxy": torch.tensor(boxes).reshape(-1, 4),
                    "masks": torch.stack(masks) if masks else torch.zeros(0, video.height, video.width),
                }
                yield np.asarray(draw_overlay(image, detections, ids))

        return write_video(out, frames(), fps=video.fps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official, bare, DDP or training checkpoint")
    parser.add_argument("--video", type=Path, required=True, help="a video file (.mp4, .webm, ...)")
    parser.add_argument("--prompt", action="append", required=True, help='a noun phrase, e.g. "red car"; repeatable')
    parser.add_argument("--out", type=Path, default=None, help="write the overlay video here")
    parser.add_argument("--json", type=Path, default=None, help="write the SA-Co/VEval predictions here")
    parser.add_argument(
        "--model",
        choices=model_names(),
        default=None,
        help=f"model preset of the checkpoint (default: a training checkpoint's own config, else {DEFAULT_MODEL})",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="masklets drawn and printed score above this")
    parser.add_argument(
        "--min-score", type=float, default=EvalConfig.min_score, help="detections linked (and in --json) above this"
    )
    parser.add_argument("--log-every", type=int, default=50, help="log progress every N frames")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"--video {args.video} does not exist")
    dist_env = init_distributed()
    setup_logging(dist_env.rank)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", dist_env.local_rank)
        try:
            model, input_size = load_model(args.checkpoint, args.model, device)
            video = VideoFile(args.video)
        except (ValueError, InstantiationException) as error:
            parser.exit(2, f"predict_video: {error}\n")
        group = build_frame_group(None)
        with video:
            logger.info(
                "%s: %d frames %dx%d at %.2f fps", args.video, video.num_frames, video.width, video.height, video.fps
            )
            records = predict_video(
                model,
                video,
                args.prompt,
                input_size,
                group,
                config=EvalConfig(min_score=args.min_score),
                log_every=args.log_every,
            )
            logger.info("decoded %d of the video's %d frames on rank 0", video.decoded_frames, video.num_frames)
        if dist_env.rank == 0:
            _report(records, args)
    finally:
        teardown_distributed()


def _report(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    shown = [(i + 1, r) for i, r in enumerate(records) if r["score"] > args.threshold]
    print(f"{len(shown)} masklets of {args.prompt} in {args.video} (score > {args.threshold})")
    for masklet_id, record in shown:
        present = [t for t, box in enumerate(record["bboxes"]) if box is not None]
        print(
            f"masklet {masklet_id}  {record['noun_phrase']!r}  score {record['score']:.3f}  "
            f"frames {present[0]}-{present[-1]} ({len(present)})"
        )
    if args.json is not None:
        write_predictions(records, args.json)
        print(f"predictions written to {args.json}")
    if args.out is not None:
        write_overlay(args.video, records, args.out, args.threshold)
        print(f"overlay written to {args.out}")


if __name__ == "__main__":
    main()
