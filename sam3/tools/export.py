"""Export a SAM3 checkpoint as one `torch.export` program (`.pt2`) that runs with plain torch.

    python -m sam3.tools.export --checkpoint sam3.pt --out sam3.pt2 [--model sam3|tiny] [--image-size 1008]
        [--with-boxes] [--bf16] [--aoti] [--device cpu|cuda]

The artifact's inputs and outputs are described in `sam3/export.py` and the README ("Deploying with
torch.export"). After exporting, the program is checked against the eager model on a batch of other
sizes than the export's example (3 images x 2 prompts) and the max |exported - eager| per output and
the artifact size are logged. `--aoti` also writes an AOTInductor package next to `--out`
(`NAME.aoti.pt2`), checked the same way.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from sam3.export import ExampleInputs, ExportableSam3, compile_aoti, example_inputs, export_model, max_abs_diff
from sam3.model_builder import model_names
from sam3.tools.predict import load_model

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official, bare, DDP or training checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the .pt2 to write")
    parser.add_argument(
        "--model",
        choices=model_names(),
        default=None,
        help="model preset of the checkpoint (default: a training checkpoint's own config, else sam3)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="square input side (default: the model's)")
    parser.add_argument("--with-boxes", action="store_true", help="add box prompt inputs (boxes, labels, padding)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast inside the graph (fp32 in and out)")
    parser.add_argument("--aoti", action="store_true", help="also write an AOTInductor package NAME.aoti.pt2")
    parser.add_argument("--device", default="cpu", help="device to export for (cpu, cuda)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, model_size = load_model(args.checkpoint, args.model, torch.device(args.device))
    image_size = args.image_size or model_size
    patch = model.backbone.vision_backbone.trunk.patch_size
    if image_size % patch:
        raise ValueError(f"--image-size {image_size} is not a multiple of the patch size {patch}")
    num_boxes = 3 if args.with_boxes else 0
    example = example_inputs(model, image_size=image_size, num_boxes=num_boxes)
    program = export_model(model, example, use_bf16=args.bf16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, args.out)

    check = example_inputs(
        model, image_size=image_size, num_images=3, prompts=("cat", "a red car"), num_boxes=num_boxes, seed=1
    )
    eager = ExportableSam3(model, use_bf16=args.bf16)
    _report("exported", args.out, torch.export.load(args.out).module(), eager, check)
    if args.aoti:
        package = compile_aoti(program, args.out.with_suffix(".aoti.pt2"))
        from torch._inductor import aoti_load_package

        _report("AOTInductor", package, aoti_load_package(str(package)), eager, check)


@torch.no_grad()
def _report(kind: str, path: Path, run, eager: ExportableSam3, check: ExampleInputs) -> None:
    """Logs max |`run` - eager| per output on `check` and the size of the artifact at `path`."""
    diffs = max_abs_diff(run(*check.as_args()), eager(*check.as_args()))
    images, prompts = check.images.shape[0], check.token_ids.shape[0]
    logger.info(
        "%s vs eager, %d images x %d prompts: max |diff| %.2e (%s)",
        kind,
        images,
        prompts,
        max(diffs.values()),
        ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()),
    )
    logger.info("%s artifact %s: %.1f MB", kind, path, path.stat().st_size / 2**20)


if __name__ == "__main__":
    main()
