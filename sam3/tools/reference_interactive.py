"""Run INTERACTIVE_CASES_V1 with our interactive heads and save the keys of Meta's reference file
(`sam3_interactive_seeded_outputs.pt`): SEEDED_INIT_V1 weights on the released names, FIXED_FEATURES_V1 in
place of the ViT, the neck's `sam2_convs` pyramid and the tracker heads at image_size 224.

    python -m sam3.tools.reference_interactive --seed 0 --out ours_interactive_seed0.pt

The official side is `../shared/tools/official_reference.py interactive --seed N`. Recipe:
`../shared/reference/README.md`. fp32, CPU, eval mode.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from sam3.interactive import predict_masks
from sam3.model.neck import ViTDetNeck
from sam3.model.tracker import Tracker
from sam3.model_builder import model_config
from sam3.tools.seeded_init import seeded_tensor

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
TRUNK_DIM = 1024
ORIG_HW = (100, 150)
NECK_NAME = "detector.backbone.vision_backbone."
TRACKER_NAME = "tracker."
BOX_A = [22.0, 12.0, 68.0, 58.0]
CASES = {
    "a_point_multimask": {"points": [[45.0, 35.0]], "point_labels": [1], "multimask_output": True},
    "b_box_negpoint_maskinput": {
        "points": [[62.0, 52.0]],
        "point_labels": [0],
        "boxes": BOX_A,
        "multimask_output": False,
    },
    "c_three_boxes": {"boxes": [BOX_A, [84.0, 44.0, 126.0, 86.0], [0.0, 0.0, 150.0, 100.0]], "multimask_output": False},
    "d_two_points_normalized": {
        "points": [[0.70, 0.65], [0.30, 0.35]],
        "point_labels": [1, 0],
        "multimask_output": False,
        "normalize_coords": False,
    },
    "e_padding_point_only": {"points": [[0.0, 0.0]], "point_labels": [-1], "multimask_output": True},
}


class FixedTrunk(nn.Module):
    """Stands in for the ViT: returns FIXED_FEATURES_V1 of one frame whatever the input."""

    def __init__(self, frame: int = 0, image_size: int = IMAGE_SIZE, patch_size: int = 14) -> None:
        super().__init__()
        self.embed_dim = TRUNK_DIM
        self.register_buffer("features", fixed_features(frame, image_size // patch_size), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ignored -> (1, 1024, g, g)."""
        return self.features


def fixed_features(frame: int, grid: int) -> torch.Tensor:
    """FIXED_FEATURES_V1: (1, 1024, grid, grid) float32, two Gaussian blobs on channel-wise waves."""
    i, j = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    u, v = (j + 0.5) / grid, (i + 0.5) / grid
    c = torch.arange(TRUNK_DIM, dtype=torch.float64)[:, None, None]
    wave = torch.sin(2 * math.pi * ((1 + c % 4) * u + (1 + torch.floor(c / 4) % 4) * v) + 0.37 * c + 0.5 * frame)
    b1 = torch.exp(-((u - 0.30 - 0.05 * frame) ** 2 + (v - 0.35 - 0.03 * frame) ** 2) / (2 * 0.14**2))
    b2 = torch.exp(-((u - 0.70 + 0.04 * frame) ** 2 + (v - 0.65 + 0.02 * frame) ** 2) / (2 * 0.12**2))
    trunk = 0.5 * wave + 2 * torch.cos(0.61 * c) * b1 + 2 * torch.sin(0.43 * c + 1) * b2
    return trunk.to(torch.float32)[None]


def build_seeded_heads(seed: int, image_size: int = IMAGE_SIZE) -> tuple[ViTDetNeck, Tracker]:
    """The `sam3` preset's neck (on `FixedTrunk`) and tracker at `image_size` px (the recipes: 224),
    SEEDED_INIT_V1 on released names."""
    cfg = model_config("sam3", [f"backbone.vision_backbone.trunk.img_size={image_size}"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    neck_cfg = {k: v for k, v in cfg.backbone.vision_backbone.items() if k != "trunk"}
    neck = instantiate(neck_cfg, trunk=FixedTrunk(image_size=image_size)).eval()
    tracker = instantiate(cfg.tracker).eval()
    with torch.no_grad():
        for prefix, module in ((NECK_NAME, neck), (TRACKER_NAME, tracker)):
            for key, tensor in module.state_dict(keep_vars=True).items():
                tensor.copy_(seeded_tensor(prefix + key, tensor.shape, seed))
    return neck, tracker


@torch.no_grad()
def reference_interactive(neck: ViTDetNeck, tracker: Tracker) -> dict[str, torch.Tensor]:
    """Runs the five cases; returns the reference keys."""
    _, _, sam2_fpn, _ = neck.forward_dual(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), num_levels=4)
    features = tracker.image_features(sam2_fpn[:3])
    high0, high1 = features.high_res_feats
    tensors = {"features/trunk_crop": neck.trunk.features[0, :8, :4, :4]}
    for i, level in enumerate(sam2_fpn[:3]):
        tensors[f"features/sam2_fpn{i}_pool8"] = F.adaptive_avg_pool2d(level, 8)
        tensors[f"features/sam2_fpn{i}_crop"] = level[0, :16, :8, :8]
    tensors["features/sam2_fpn3_pool4"] = F.adaptive_avg_pool2d(sam2_fpn[3], 4)
    tensors["image_embed"] = features.image_embed
    tensors["high_res_feats0_pool16"] = F.adaptive_avg_pool2d(high0, 16)
    tensors["high_res_feats0_crop"] = high0[0, :, :8, :8]
    tensors["high_res_feats1_pool16"] = F.adaptive_avg_pool2d(high1, 16)
    tensors["high_res_feats1_crop"] = high1[0, :, :8, :8]
    tensors["dense_pe"] = tracker.sam_prompt_encoder.get_dense_pe()

    first_low_res = None
    for case, prompt in CASES.items():
        mask_input = None
        if case.startswith("b_"):
            mask_input = first_low_res
        result = predict_masks(tracker, features, ORIG_HW, mask_input=mask_input, return_logits=True, **prompt)
        out = {
            "masks": result.masks,
            "iou_predictions": result.iou_predictions,
            "low_res_masks": result.low_res_masks,
            "sparse_embeddings": result.output.sparse,
            "decoder_all_masks": result.output.decoded.masks,
            "decoder_all_iou": result.output.decoded.iou,
            "decoder_mask_tokens_out": result.output.decoded.mask_tokens,
            "object_score_logits": result.output.decoded.object_score_logits,
        }
        if mask_input is not None:
            out["dense_embeddings"] = result.output.dense
        if case.startswith("a_"):
            first_low_res = result.low_res_masks[result.iou_predictions.argmax()][None]
            binary = predict_masks(tracker, features, ORIG_HW, return_logits=False, **prompt)
            out["masks_binary"] = binary.masks.float()
        tensors.update({f"{case}/{k}": v for k, v in out.items()})
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tensors = reference_interactive(*build_seeded_heads(args.seed))
    meta = {
        "recipe": "INTERACTIVE_CASES_V1 (ours)",
        "seed": args.seed,
        "image_size": IMAGE_SIZE,
        "orig_hw": list(ORIG_HW),
    }
    torch.save({"tensors": tensors, "meta": meta}, args.out)
    logger.info("wrote %d tensors to %s", len(tensors), args.out)


if __name__ == "__main__":
    main()
