"""Detect and segment every instance of a text prompt in one image with a SAM3 checkpoint, or segment
one object from clicks and / or a box with the interactive heads.

    python -m sam3.tools.predict --checkpoint sam3.pt --image street.jpg --prompt "red car" --out overlay.png
    python -m sam3.tools.predict --checkpoint sam3.pt --image street.jpg --points 120,80 300,90,0 --out click.png
    python -m sam3.tools.predict --checkpoint sam3.pt --image street.jpg --box 40,30,260,200 --out box.png

Clicks are X,Y[,LABEL] in pixels of the image (label 1 positive, the default; 0 negative); the box is
X0,Y0,X1,Y1. One click gives the best of three masks by predicted IoU, more prompts a single mask.

The model is the one the checkpoint was trained with when it is one of our training checkpoints (they
carry their model config), else the `--model` preset (default: the released size, `sam3`).
Prints one line per detection (score and box in pixels, xyxy) and, with `--out`, writes the image
with the detections' masks and boxes drawn on it. The image is resized to the model's square input
without keeping its aspect ratio, as the released model expects; results are mapped back.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from PIL import Image, ImageDraw
from torchvision.transforms.functional import pil_to_tensor

from sam3.checkpoint import read_model_config
from sam3.interactive import InteractiveSegmenter
from sam3.model.sam3_image import Sam3Image
from sam3.model_builder import apply_runtime_policy, build_model, model_names

DEFAULT_MODEL = "sam3"
COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def build_checkpoint_model(checkpoint: str | Path, name: str | None) -> Sam3Image:
    """The checkpoint's model, loaded strictly: preset `name`, else the config a training checkpoint
    carries, else `DEFAULT_MODEL` (an error that asks for `--model` when the weights do not fit it)."""
    guessed = name is None and read_model_config(checkpoint) is None
    try:
        return build_model(DEFAULT_MODEL if guessed else name, checkpoint=checkpoint)
    except (ValueError, InstantiationException) as error:  # hydra wraps the loader's ValueError
        if not guessed:
            raise
        raise ValueError(
            f"{checkpoint} carries no model config and does not fit the default preset {DEFAULT_MODEL!r}; "
            f"pass --model with the preset it was trained with ({', '.join(model_names())})"
        ) from error


def load_model(checkpoint: Path, name: str | None, device: torch.device) -> tuple[Sam3Image, int]:
    """The checkpoint's model in eval mode and its square input size.

    Args:
        checkpoint: official, bare, DDP or training checkpoint.
        name: model preset; None takes the config stored in a training checkpoint, else `DEFAULT_MODEL`.
        device: where the model goes.
    """
    model = apply_runtime_policy(build_checkpoint_model(checkpoint, name), eval_mode=True)
    return model.to(device), model.backbone.vision_backbone.trunk.img_size


@torch.no_grad()
def predict(
    model: Sam3Image, image: Image.Image, prompt: str, input_size: int, threshold: float
) -> dict[str, torch.Tensor]:
    """Detections of `prompt` in `image`.

    Returns:
        scores (N,), boxes_xyxy (N, 4) in pixels of `image` (clipped to it), masks (N, height, width) bool; sorted
        by descending score, only scores above `threshold`.
    """
    device = next(model.parameters()).device
    width, height = image.size
    vision = model.backbone.forward_image(model_input(pil_to_tensor(image.convert("RGB")), input_size, device)[None])
    text = model.backbone.forward_text([prompt])
    index = torch.zeros(1, dtype=torch.int64, device=device)
    out = model.forward_grounding(vision, text, index, index)
    scores = out.scores()[0]
    keep = (scores > threshold).nonzero().squeeze(1)
    keep = keep[scores[keep].argsort(descending=True)]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
    boxes = out.pred_boxes_xyxy[0, keep].clamp(0, 1) * scale  # clipped to the image
    result = {"scores": scores[keep].cpu(), "boxes_xyxy": boxes.cpu()}
    if out.pred_masks is None or len(keep) == 0:
        result["masks"] = torch.zeros(len(keep), height, width, dtype=torch.bool)
    else:
        logits = F.interpolate(out.pred_masks[:, keep], size=(height, width), mode="bilinear", align_corners=False)
        result["masks"] = (logits[0] > 0).cpu()
    return result


def model_input(frame: torch.Tensor, input_size: int, device: torch.device) -> torch.Tensor:
    """A (3, H, W) uint8 RGB frame as the model's (3, S, S) normalised input (aspect ratio not kept)."""
    pixels = frame.to(device).float().div(255)[None]  # 1, 3, H, W
    pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", antialias=True)
    return ((pixels - 0.5) / 0.5)[0]


def segment_interactive(
    model: Sam3Image, image: Image.Image, points: list[list[float]], box: list[float] | None
) -> dict[str, torch.Tensor]:
    """One object's mask from clicks ([x, y, label] in pixels) and / or a box (xyxy pixels), as a detection.

    Returns:
        scores (1,) predicted IoU, boxes_xyxy (1, 4) the mask's bounding box (or zeros), masks (1, height, width).
    """
    segmenter = InteractiveSegmenter(model, image_cache_size=1)
    pixels = np.asarray(image.convert("RGB"))
    coords = [p[:2] for p in points] or None
    labels = [int(p[2]) for p in points] or None
    result = segmenter.segment_image(
        image=pixels, points=coords, point_labels=labels, boxes=box, multimask_output=len(points) <= 1 and box is None
    )
    best = int(result.iou_predictions.argmax())
    mask = result.masks[best].cpu()
    ys, xs = mask.nonzero(as_tuple=True)
    box_xyxy = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if len(xs) else [[0, 0, 0, 0]])
    return {
        "scores": result.iou_predictions[best : best + 1].cpu(),
        "boxes_xyxy": box_xyxy.float(),
        "masks": mask[None],
    }


def _point(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"a click is X,Y or X,Y,LABEL, got {text!r}")
    return values if len(values) == 3 else [*values, 1.0]


def _box(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a box is X0,Y0,X1,Y1, got {text!r}")
    return values


def draw_overlay(image: Image.Image, detections: dict[str, torch.Tensor], ids: list[int] | None = None) -> Image.Image:
    """`image` with each detection's mask tinted and its box and score drawn; with `ids` (one per
    detection, e.g. masklet ids of a video) the colour follows the id and the label reads "id score"."""
    canvas = image.convert("RGB")
    colors = [COLORS[(i if ids is None else ids[i]) % len(COLORS)] for i in range(len(detections["scores"]))]
    for i, mask in enumerate(detections["masks"]):
        tint = Image.new("RGB", canvas.size, colors[i])
        alpha = Image.fromarray((mask.numpy() * 110).astype("uint8"), mode="L")
        canvas = Image.composite(tint, canvas, alpha)
    draw = ImageDraw.Draw(canvas)
    for i, (score, box) in enumerate(
        zip(detections["scores"].tolist(), detections["boxes_xyxy"].tolist(), strict=True)
    ):
        label = f"{score:.2f}" if ids is None else f"{ids[i]} {score:.2f}"
        draw.rectangle(box, outline=colors[i], width=3)
        draw.text((box[0] + 3, box[1] + 2), label, fill=colors[i])
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official, bare, DDP or training checkpoint")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--prompt", default=None, help='a noun phrase, e.g. "red car"')
    parser.add_argument("--points", type=_point, nargs="+", default=[], help="clicks X,Y[,LABEL] in image pixels")
    parser.add_argument("--box", type=_box, default=None, help="a box X0,Y0,X1,Y1 in image pixels")
    parser.add_argument("--out", type=Path, default=None, help="write the overlay image here")
    parser.add_argument(
        "--model",
        choices=model_names(),
        default=None,
        help=f"model preset of the checkpoint (default: a training checkpoint's own config, else {DEFAULT_MODEL})",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum detection score")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.image.is_file():
        parser.error(f"--image {args.image} does not exist")
    interactive = bool(args.points) or args.box is not None
    if interactive == (args.prompt is not None):
        parser.error("give either --prompt (text) or --points / --box (clicks)")
    try:
        model, input_size = load_model(args.checkpoint, args.model, torch.device(args.device))
    except (ValueError, InstantiationException) as error:
        parser.exit(2, f"predict: {error}\n")
    image = Image.open(args.image)
    if interactive:
        detections = segment_interactive(model, image, args.points, args.box)
        print(f"interactive mask in {args.image} (predicted IoU)")
    else:
        detections = predict(model, image, args.prompt, input_size, args.threshold)
        print(f"{len(detections['scores'])} detections of {args.prompt!r} in {args.image} (score > {args.threshold})")
    for score, box in zip(detections["scores"].tolist(), detections["boxes_xyxy"].tolist(), strict=True):
        print(f"score {score:.3f}  box_xyxy {box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}")
    if args.out is not None:
        draw_overlay(image, detections).save(args.out)
        print(f"overlay written to {args.out}")


if __name__ == "__main__":
    main()
