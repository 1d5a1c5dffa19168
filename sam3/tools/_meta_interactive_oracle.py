"""Oracle side of the 1008 px interactive parity test: Meta's interactive predictor on a real image.

Runs only in the interpreter of a virtualenv holding Meta's `sam3==0.1.4`, started with `python -I`
(so neither this directory nor the working directory is on `sys.path`): there `import sam3` is Meta's
package and this file imports nothing of ours. The two sides exchange plain tensors through
`torch.save` files, loaded with `weights_only=True`.

Meta's modules at their native geometry (image_size 1008): the tracker as `build_tracker` makes it,
the ViT trunk and the dual neck (`sam2_convs` on) as `build_sam3_image_model(enable_inst_interactivity
=True)` makes them, joined by `SAM3VLBackbone(scalp=1)`, driven by `SAM3InteractiveImagePredictor` with
its defaults. Weights: SEEDED_INIT_V1 on released-checkpoint names (`tracker.*` and
`detector.backbone.vision_backbone.*`, the trunk included); complex RoPE tables are the model's own.

    python -I _meta_interactive_oracle.py [--threads N] PROBLEM.pt OUT.pt

PROBLEM.pt: `seed` (int), `image` (H0, W0, 3) uint8 RGB, `cases` (name -> keyword arguments of
`predict` as lists; `mask_input` may name an earlier case whose best low-res mask is fed back).
OUT.pt: `tensors` (`<case>/{masks,iou_predictions,low_res_masks}`, `<case>/masks_binary` where
`binary` is set, `features/{image_embed,high_res_feats0,high_res_feats1}`), `seeded_names` and `meta`.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode


def _load_seeded_init():
    """Our SEEDED_INIT_V1 module (it needs torch only), loaded by path: here `sam3` is Meta's package."""
    spec = importlib.util.spec_from_file_location("seeded_init", Path(__file__).with_name("seeded_init.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEEDED_INIT = _load_seeded_init()
NECK_NAME = "detector.backbone.vision_backbone."
TRACKER_NAME = "tracker."


class CpuOnly(TorchFunctionMode):
    """Sends every CUDA device request of Meta's code to the CPU (no file of the package is edited)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        kwargs = {k: (_cpu(v) if k == "device" else v) for k, v in (kwargs or {}).items()}
        if func is torch.Tensor.to:
            args = tuple(_cpu(a) for a in args)
        else:
            args = tuple(torch.device("cpu") if isinstance(a, torch.device) and a.type == "cuda" else a for a in args)
        return func(*args, **kwargs)


def _cpu(device):
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    return device


@torch.no_grad()
def seed_module(module: torch.nn.Module, prefix: str, seed: int) -> list[str]:
    names = []
    for key, tensor in module.state_dict(keep_vars=True).items():
        if tensor.is_complex():
            continue
        if tensor.dtype != torch.float32:
            raise SystemExit(f"{prefix}{key}: unexpected dtype {tensor.dtype}")
        tensor.copy_(SEEDED_INIT.seeded_tensor(prefix + key, tensor.shape, seed))
        names.append(prefix + key)
    return names


def build(seed: int):
    import sam3.model_builder as mb
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor

    tracker = mb.build_tracker(apply_temporal_disambiguation=False)
    names = seed_module(tracker, TRACKER_NAME, seed)
    neck = mb._create_vit_neck(
        mb._create_position_encoding(precompute_resolution=1008),
        mb._create_vit_backbone(),
        enable_inst_interactivity=True,
    )
    names += seed_module(neck, NECK_NAME, seed)
    tracker.backbone = mb._create_vl_backbone(neck, None)
    tracker.eval()
    return SAM3InteractiveImagePredictor(tracker), names


@torch.no_grad()
def run(problem: dict) -> dict:
    import numpy as np

    start = time.time()
    predictor, names = build(int(problem["seed"]))
    built = time.time()
    predictor.set_image(problem["image"].numpy())
    embedded = time.time()
    feats = predictor._features
    tensors = {
        "features/image_embed": feats["image_embed"],
        "features/high_res_feats0": feats["high_res_feats"][0],
        "features/high_res_feats1": feats["high_res_feats"][1],
    }
    best_low_res = {}
    for case, spec in problem["cases"].items():
        kwargs = {k: v for k, v in spec.items() if k != "binary"}
        for key in ("point_coords", "point_labels", "box"):
            if key in kwargs:
                kwargs[key] = np.asarray(kwargs[key], dtype=np.int64 if key == "point_labels" else np.float32)
        if "mask_input" in kwargs:
            kwargs["mask_input"] = best_low_res[kwargs["mask_input"]]
        masks, iou, low_res = predictor.predict(**kwargs, return_logits=True)
        tensors[f"{case}/masks"] = torch.from_numpy(np.ascontiguousarray(masks)).float()
        tensors[f"{case}/iou_predictions"] = torch.from_numpy(np.ascontiguousarray(iou)).float()
        tensors[f"{case}/low_res_masks"] = torch.from_numpy(np.ascontiguousarray(low_res)).float()
        if low_res.ndim == 3:
            best_low_res[case] = low_res[int(np.argmax(iou))][None]
        if spec.get("binary"):
            binary, _, _ = predictor.predict(**kwargs, return_logits=False)
            tensors[f"{case}/masks_binary"] = torch.from_numpy(np.ascontiguousarray(binary)).float()
    meta = {
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "build_s": built - start,
        "set_image_s": embedded - built,
        "predict_s": time.time() - embedded,
    }
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    return {"tensors": tensors, "seeded_names": names, "meta": meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problem", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    problem = torch.load(args.problem, weights_only=True)
    with CpuOnly():
        result = run(problem)
    torch.save(result, args.out)


if __name__ == "__main__":
    main()
