"""Run our `sam3` preset on SEEDED_INIT_V1 weights and the FIXED_INPUT_V1 cases, saving the same keys
as Meta's reference outputs (`sam3_image_seeded_outputs.pt`) plus a `timing` dict with its keys.

    python -m sam3.tools.reference_forward --seed 0 --out ours_seed0.pt

The official side of the comparison is `../shared/tools/official_reference.py reference --seed N`
(run in a separate environment with Meta's package); both files then hold the same reduced tensors
(pools, crops, top-2 masks) and timings measured the same way on the same machine.
Recipe: `../shared/reference/README.md`. fp32, CPU, eval mode, no image preprocessing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sam3.model.geometry_encoder import GeometryPrompts
from sam3.model.sam3_image import Sam3Image
from sam3.model_builder import apply_runtime_policy, build_model
from sam3.tools.seeded_init import fixed_input, read_manifest, seeded_tensor

logger = logging.getLogger(__name__)

PROMPT = "dog"
BOXES_CXCYWH = [[0.45, 0.5, 0.4, 0.4], [0.76, 0.18, 0.26, 0.16]]
BOX_LABELS = [True, False]
CASES = ("text", "text_boxes")
# Meta's image model (the recipe, the manifest) is built without the interactive heads.
WITHOUT_INTERACTIVE = ("tracker=null", "backbone.vision_backbone.use_sam2_convs=false")


def build_seeded_model(seed: int, name: str = "sam3", manifest_path: Path | None = None) -> Sam3Image:
    """Builds the preset in eval mode and fills every float tensor with SEEDED_INIT_V1 for `seed`.

    RoPE tables (complex buffers) are the model's own. With `manifest_path`, the model's state dict
    must first equal the manifest key by key (shape and dtype).
    """
    model = apply_runtime_policy(build_model(name, overrides=WITHOUT_INTERACTIVE), eval_mode=True)
    state = model.state_dict(keep_vars=True)
    if manifest_path is not None:
        manifest = {k: (shape, dtype) for k, shape, dtype in read_manifest(manifest_path)}
        ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
        if ours != manifest:
            diff = sorted(set(ours.items()) ^ set(manifest.items()))[:10]
            raise ValueError(f"model state dict differs from {manifest_path}; first differences: {diff}")
    with torch.no_grad():
        for key, tensor in state.items():
            if not tensor.is_complex():
                tensor.copy_(seeded_tensor(key, tensor.shape, seed))
    return model


@torch.no_grad()
def reference_forward(model: Sam3Image) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Runs both FIXED_INPUT_V1 cases; returns (reduced tensors under the reference keys, timing)."""
    timing: dict[str, float] = {}
    trunk_out = {}
    hook = model.backbone.vision_backbone.trunk.register_forward_hook(lambda _m, _i, out: trunk_out.update(x=out))
    start = time.perf_counter()
    vision = model.backbone.forward_image(fixed_input())
    timing["forward_image_s"] = time.perf_counter() - start
    hook.remove()
    start = time.perf_counter()
    text = model.backbone.forward_text([PROMPT])
    timing["forward_text_s"] = time.perf_counter() - start

    tensors = {
        "text/token_ids": model.backbone.language_backbone.tokenizer([PROMPT]),
        "text/language_mask": text["language_mask"],
        "text/language_features": text["language_features"],
        "text/language_embeds": text["language_embeds"],
        "vision/trunk_out_pool9": F.adaptive_avg_pool2d(trunk_out["x"], 9),
        "vision/trunk_out_crop": trunk_out["x"][0, :16, :8, :8],
    }
    for i, level in enumerate(vision["backbone_fpn"]):
        tensors[f"vision/fpn{i}_pool18"] = F.adaptive_avg_pool2d(level, 18)
        tensors[f"vision/fpn{i}_crop"] = level[0, :16, :16, :16]

    # The encoder's inputs (prompt, mask; it leaves the prompt unchanged) and outputs, and the decoder's
    # presence token, are read with hooks: the model's API returns only the detector output.
    inner = {}
    hooks = [
        model.transformer["encoder"].register_forward_hook(
            lambda _m, args, out: inner.update(prompt=args[2], prompt_mask=args[3], encoder_states=out)
        ),
        model.transformer["decoder"].register_forward_hook(
            lambda _m, _args, out: inner.update(presence_feats=out.presence_feats)
        ),
    ]
    index = torch.zeros(1, dtype=torch.int64)
    for case in CASES:
        geometry = None
        if case == "text_boxes":
            geometry = GeometryPrompts.from_boxes(torch.tensor([BOXES_CXCYWH]), torch.tensor([BOX_LABELS]))
        start = time.perf_counter()
        out = model.forward_grounding(vision, text, index, index, geometry)
        timing[f"forward_grounding_{case}_s"] = time.perf_counter() - start
        grid = vision["backbone_fpn"][-1].shape[-2:]
        states_map = inner["encoder_states"].transpose(1, 2).unflatten(2, grid)  # 1, C, H, W
        order = out.pred_logits[0, :, 0].argsort(descending=True)
        prefix = f"{case}/"
        tensors.update(
            {
                prefix + "pred_logits": out.pred_logits,
                prefix + "pred_boxes": out.pred_boxes,
                prefix + "pred_boxes_xyxy": out.pred_boxes_xyxy,
                prefix + "presence_logit_dec": out.presence_logit_dec,
                prefix + "presence_feats": inner["presence_feats"].transpose(0, 1),
                prefix + "queries": out.queries,
                prefix + "prompt_after_enc": inner["prompt"].transpose(0, 1),
                prefix + "prompt_mask": inner["prompt_mask"],
                prefix + "encoder_hidden_states_pool18": F.adaptive_avg_pool2d(states_map, 18),
                prefix + "encoder_hidden_states_first256": inner["encoder_states"].transpose(0, 1)[:256],
                prefix + "pred_masks_pool36": F.adaptive_avg_pool2d(out.pred_masks, 36),
                prefix + "pred_masks_top2_idx": order[:2],
                prefix + "pred_masks_top2": out.pred_masks[0, order[:2]],
                prefix + "semantic_seg": out.semantic_seg,
            }
        )
    for hook in hooks:
        hook.remove()
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}, timing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="SEEDED_INIT_V1 seed")
    parser.add_argument("--out", type=Path, required=True, help="output .pt (keys 'tensors', 'timing', 'meta')")
    parser.add_argument("--model", default="sam3", help="model preset (configs/model/)")
    parser.add_argument("--manifest", type=Path, default=None, help="check the state dict against this manifest")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = build_seeded_model(args.seed, args.model, args.manifest)
    build_s = time.perf_counter() - start
    tensors, timing = reference_forward(model)
    timing["build_and_seed_s"] = build_s
    timing["forward_total_text_case_s"] = (
        timing["forward_image_s"] + timing["forward_text_s"] + timing["forward_grounding_text_s"]
    )
    meta = {
        "seed": args.seed,
        "procedure": "SEEDED_INIT_V1 / FIXED_INPUT_V1",
        "torch_version": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"tensors": tensors, "timing": timing, "meta": meta}, args.out)
    print(json.dumps({"out": str(args.out), "meta": meta, "timing": timing}, indent=1))


if __name__ == "__main__":
    main()
