"""Write a fine-tuned model's weights back in the layout of Meta's released `sam3.pt`, so Meta's
`sam3` package (`build_sam3_image_model` / `build_sam3_video_model` with `checkpoint_path`) and the
tools built on it load the fine-tune unchanged.

    python -m sam3.tools.export_weights --checkpoint CKPT --out sam3_finetuned.pt [--base sam3.pt] [--model sam3]

The file is `{"model": {"detector.<image-model key>": ..., "tracker.<key>": ...}}`, as released:
every tensor of the model under its released name (our names are the released image model's, so
`detector.` is prefixed and `tracker.*` kept), RoPE tables (`*.freqs_cis`, complex64) included as
the release has them, floats as float32. Nothing else is written (no config, no optimizer).

The exported weights are the built model's `state_dict()` after the checkpoint is loaded: whatever
the model computes with is what is written. A LoRA run's checkpoint (it carries its `lora_config`) is
read with its adapters merged into the base weights (W + alpha / rank * B A,
`sam3.lora.merge_lora_state_dict`), so the file has exactly the released keys and shapes and no `lora_*`.

`--base` (the released `sam3.pt`, or any file in its layout) fills what the fine-tune lacks: a model
built with `tracker=null` has no `tracker.*` and, with `use_sam2_convs=false`, no
`detector.backbone.vision_backbone.sam2_convs.*`, and with `enable_segmentation=false` no
`detector.segmentation_head.*`; they are taken from the base. Keys present in the
fine-tune always come from the fine-tune. With a base, the written key set is exactly the base's
(a fine-tune key the base does not have, or of another shape, is an error). Without one, the model
must have all three parts itself.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sam3.checkpoint import OFFICIAL_MODEL_PREFIX, load_state_dict, read_state_dict
from sam3.model_builder import model_names
from sam3.tools.predict import DEFAULT_MODEL, build_checkpoint_model

logger = logging.getLogger(__name__)

TRACKER_PREFIX = "tracker."
SAM2_CONVS_PREFIX = OFFICIAL_MODEL_PREFIX + "backbone.vision_backbone.sam2_convs."
SEG_HEAD_PREFIX = OFFICIAL_MODEL_PREFIX + "segmentation_head."
# Parts of the released layout a model may be built without (then `--base` must supply them).
REQUIRED_PARTS = (TRACKER_PREFIX, SAM2_CONVS_PREFIX, SEG_HEAD_PREFIX)
_MAX_LISTED = 10


def released_name(key: str) -> str:
    """Our model key -> its name in the released file (`tracker.*` as is, the rest under `detector.`)."""
    return key if key.startswith(TRACKER_PREFIX) else OFFICIAL_MODEL_PREFIX + key


def released_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The release stores float32 weights and complex64 RoPE tables; other dtypes are kept."""
    if tensor.is_complex():
        return torch.complex64
    return torch.float32 if tensor.is_floating_point() else tensor.dtype


def export_state_dict(
    model_state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """A model state dict (our names) as the released `model` dict.

    Args:
        model_state: `model.state_dict()` of a built SAM3 image model.
        base: a released-layout `model` dict; supplies every key the model lacks. None: the model must
            have every released part (tracker, `sam2_convs`, segmentation head).

    Returns:
        released name -> tensor (float32 / complex64), in the base's order when given, else the model's.

    Raises:
        ValueError: a required part is missing (and no base gives it), or with a base, a model key the
            base does not have or whose shape differs.
    """
    ours = {released_name(k): v.detach().to(released_dtype(v)) for k, v in model_state.items()}
    if base is None:
        missing = [p + "*" for p in REQUIRED_PARTS if not any(k.startswith(p) for k in ours)]
        if missing:
            raise ValueError(
                f"the model has no {' and no '.join(missing)} (built with tracker=null, use_sam2_convs=false or "
                "enable_segmentation=false): the released layout needs them; pass --base sam3.pt (the released "
                "checkpoint) to copy them from it"
            )
        return ours
    if not any(k.startswith(OFFICIAL_MODEL_PREFIX) for k in base):
        raise ValueError(
            f"--base is not in the released layout (no '{OFFICIAL_MODEL_PREFIX}*' keys); give Meta's sam3.pt"
        )
    extra = [k for k in ours if k not in base]
    if extra:
        raise ValueError(
            f"{len(extra)} model keys are not in --base's layout: {_listed(extra)}; the base must be a checkpoint "
            "of the same architecture"
        )
    mis_shaped = [
        f"{k}: model {tuple(v.shape)} vs base {tuple(base[k].shape)}"
        for k, v in ours.items()
        if v.shape != base[k].shape
    ]
    if mis_shaped:
        raise ValueError(f"{len(mis_shaped)} model tensors differ in shape from --base: {_listed(mis_shaped)}")
    from_base = [k for k in base if k not in ours]
    missing = [p + "*" for p in REQUIRED_PARTS if not any(k.startswith(p) for k in base)]
    if missing:
        raise ValueError(f"--base has no {' and no '.join(missing)}; give the released sam3.pt")
    if from_base:
        logger.info("%d tensors copied from --base (%s)", len(from_base), _summary(from_base))
    return {k: ours[k] if k in ours else base[k].to(released_dtype(base[k])) for k in base}


def export_model(model: nn.Module, base: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The released `model` dict of a built model (see `export_state_dict`), checked by loading it back
    into the model with our own strict loader (the tracker parts the model lacks are reported unused)."""
    exported = export_state_dict(model.state_dict(), base)
    load_state_dict(model, exported, strict=True, source="<exported weights>")
    return exported


def save_released(exported: Mapping[str, torch.Tensor], out: str | Path) -> Path:
    """Write `{"model": exported}` as the release does."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": dict(exported)}, out)
    return out


def _listed(items: list[str]) -> str:
    return ", ".join(items[:_MAX_LISTED]) + (" ..." if len(items) > _MAX_LISTED else "")


def _summary(keys: list[str]) -> str:
    counts = {p: sum(k.startswith(p) for k in keys) for p in (*REQUIRED_PARTS, OFFICIAL_MODEL_PREFIX)}
    counts[OFFICIAL_MODEL_PREFIX] -= counts[SAM2_CONVS_PREFIX]
    return ", ".join(f"{n} {p}*" for p, n in counts.items() if n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="training, official, bare or DDP checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the released-layout .pt to write")
    parser.add_argument("--base", type=Path, default=None, help="released sam3.pt: supplies the parts the model lacks")
    parser.add_argument(
        "--model",
        choices=model_names(),
        default=None,
        help=f"model preset of the checkpoint (default: a training checkpoint's own config, else {DEFAULT_MODEL})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    model = build_checkpoint_model(args.checkpoint, args.model)
    base = None
    if args.base is not None:
        base, wrapped = read_state_dict(args.base)
        if not wrapped:
            raise ValueError(f"--base {args.base} holds no 'model' dict; give the released sam3.pt")
    exported = export_model(model, base)
    save_released(exported, args.out)
    logger.info(
        "wrote %s: %d tensors (%s), %.1f s",
        args.out,
        len(exported),
        _summary(list(exported)),
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
