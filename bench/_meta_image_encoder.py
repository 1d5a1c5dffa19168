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
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

REPLIES = sys.stdout  # the package's own prints go to stderr (see main), replies alone to stdout
PREFIX = "backbone.vision_backbone."


def reply(message: dict) -> None:
    REPLIES.write(json.dumps(message) + "\n")
    REPLIES.flush()


def load_official_reference(tools: Path):
    """`official_reference.py` of the shared tools as a module; SystemExit with the reason when absent."""
    script = tools / "official_reference.py"
    if not script.is_file():
        raise SystemExit(f"shared tools not found: {script} does not exist")
    spec = importlib.util.spec_from_file_location("official_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-tools", type=Path, required=True, help="folder holding official_reference.py")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.stdout = sys.stderr
    try:
        import torch

        ref = load_official_reference(args.shared_tools)
        import sam3

        if Path(sam3.__file__).resolve().parents[1] == Path(__file__).resolve().parents[1]:
            raise SystemExit(f"imported our own sam3 ({sam3.__file__}), not Meta's: run from outside the checkout")
        version = getattr(sam3, "__version__", "?")
    except (ImportError, SystemExit) as error:
        reply({"error": f"{type(error).__name__}: {error}"})
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = build_seeded_backbone(ref, args.seed)
    reply({"ready": True, "sam3_version": version, "torch_version": torch.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply(run(backbone, json.loads(line)))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which stops
            reply({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main()
