"""Track mode against detector-only linking on a video split: phrase HOTA and mask mAP side by side.

The model is the named preset with the tracker (`--model`, trunk resized to `--image-size`); the
checkpoint's weights are loaded non-strictly: every key it lacks must be a `tracker.*` or `sam2_convs`
key, and those stay randomly initialised (the demo detector was trained with `tracker: null`), which
the script prints. Both modes evaluate the same weights with the same `eval.selection` defaults;
each prediction file is scored by `sam3.eval.veval` at every `--score-thresh`.

    python bench/track_mode.py --checkpoint runs/demo_shapes_video/checkpoints/step_00000700.pt \\
        --dataset-root data/shapes_video --out runs/track_bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sam3.checkpoint import read_state_dict
from sam3.distributed.frame_shard import build_frame_group
from sam3.eval.evaluate import evaluate, index_to_veval_gt
from sam3.eval.saco_format import parse_ground_truth, parse_predictions
from sam3.eval.track_mode import TrackConfig
from sam3.eval.veval import evaluate_veval
from sam3.model_builder import build_model, config_dir

METRICS = {"pHOTA": "video_mask_all_phrase_HOTA", "mask mAP": "video_mask_mAP_50_95"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset-root", required=True, help="holds val/annotations.json and the frames")
    parser.add_argument("--out", required=True, help="folder for the prediction files")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--detect-every", type=int, nargs="*", default=[0, 4], help="0 = frame 0 only")
    parser.add_argument("--score-thresh", type=float, nargs="+", default=[0.5, 0.2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = build_model(
        args.model, video=True, overrides=[f"backbone.vision_backbone.trunk.img_size={args.image_size}"]
    )
    state_dict, _ = read_state_dict(args.checkpoint)
    result = model.load_state_dict(state_dict, strict=False)
    unexpected = list(result.unexpected_keys)
    foreign = [k for k in result.missing_keys if not (k.startswith("tracker.") or ".sam2_convs." in k)]
    if unexpected or foreign:
        raise ValueError(f"checkpoint does not fit the detector: unexpected {unexpected[:5]}, missing {foreign[:5]}")
    print(f"random init (not in the checkpoint): {len(result.missing_keys)} tensors, all tracker.* / sam2_convs")
    model.eval()

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "demo_shapes_video",
            overrides=[f"paths.dataset_root={args.dataset_root}", f"data.image_size={args.image_size}"],
        )
    dataset = instantiate(cfg.data.val, group_size=1, group_rank=0, _convert_="all")
    gt = parse_ground_truth(index_to_veval_gt(dataset.index), source=dataset.index.source)

    runs = [("link", "link", TrackConfig())]
    runs += [
        (f"track, detect every {k or 'video'}", "track", TrackConfig(detect_every=k or None)) for k in args.detect_every
    ]
    header = ["mode", "masklets", "wall s"] + [f"{m} @{t}" for t in args.score_thresh for m in METRICS]
    print(" | ".join(header))
    for name, mode, track in runs:
        path = out / f"{mode}_{track.detect_every}.json"
        start = time.perf_counter()
        evaluate(model, dataset, build_frame_group(None), out_path=path, mode=mode, track=track)
        wall = time.perf_counter() - start
        records = json.loads(path.read_text())
        row = [name, str(len(records)), f"{wall:.1f}"]
        for thresh in args.score_thresh:
            results = evaluate_veval(gt, parse_predictions(records, gt, source=str(path)), score_thresh=thresh)
            row += [f"{results['dataset_results'][key]:.4f}" for key in METRICS.values()]
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
