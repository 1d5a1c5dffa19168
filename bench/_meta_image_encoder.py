"""Meta's side of `bench/image_encoder.py`: times Meta's `sam3==0.1.4` image encoder + neck on SEEDED_INIT_V1
weights. Run by `bench/image_encoder.py` in the oracle interpreter (never imported by our code).

    /path/to/oracle/python bench/_meta_image_encoder.py --shared-tools ../shared/tools [--threads 2]

A worker: one JSON request per stdin line, {"images", "save"} (`images`: a `torch.save`d (B, 3, H, W) tensor), answered by one JSON line on stdout,
{"seconds", "cpu_seconds"} (wall and process CPU time of one forward) or {"error"}. With "save" (a path), the four pyramid levels of that forward are written there
(`torch.save`, a list of tensors) for the parent to compare. The first line written is {"ready": ...} (or
{"error"} when the oracle package or the shared tools are missing).

Meta's vision backbone is built by its own `model_builder._create_vision_backbone` (the ViT and the
`Sam3DualViTDetNeck` of `build_sam3_image_model`, without the interactive pyramid), under the shared
tools' `CudaToCpu` mode (a constructor asks for CUDA); the forward runs without that mode, in eval mode,
fp32, under `torch.inference_mode`. Weights: `seeded_tensor` of the shared tools on the image model's
names (`backbone.vision_backbone.*`).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from _oracle_worker import serve

PREFIX = "backbone.vision_backbone."


def build_seeded_backbone(ref, seed: int):
    """Meta's vision backbone (ViT + neck) with SEEDED_INIT_V1 weights, in eval mode."""
    import torch

    from sam3 import model_builder

    with ref.CudaToCpu():
        backbone = model_builder._create_vision_backbone(enable_inst_interactivity=False)
    with torch.no_grad():
        for key, tensor in backbone.state_dict(keep_vars=True).items():
            if not tensor.is_complex():  # RoPE tables are the model's own
                tensor.copy_(ref.seeded_tensor(PREFIX + key, tuple(tensor.shape), seed))
    return backbone.eval()


def run(backbone, request: dict) -> dict:
    import torch

    images = torch.load(request["images"], weights_only=True)
    with torch.inference_mode():
        start, cpu_start = time.perf_counter(), time.process_time()
        features, _, _, _ = backbone(images)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if request.get("save"):
        torch.save([f.contiguous() for f in features], request["save"])
    return {"seconds": seconds, "cpu_seconds": cpu_seconds}


def main() -> None:
    serve(
        argparse.ArgumentParser(description=__doc__.split("\n\n")[0]),
        lambda ref, args: partial(run, build_seeded_backbone(ref, args.seed)),
    )


if __name__ == "__main__":
    main()
