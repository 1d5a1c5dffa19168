"""Oracle side of the export test: Meta's own builders load an exported file, then Meta's image model
runs the FIXED_INPUT_V1 cases.

Runs only in the interpreter of a virtualenv holding Meta's `sam3==0.1.4`, started with `python -I`
from a folder outside our checkouts (there `import sam3` is Meta's package; this file imports nothing
of ours). The CPU shim, the fixed forward and the BPE lookup are those of the shared reference script
(`../shared/tools/official_reference.py`), loaded by path.

    python -I _meta_export_oracle.py --reference-script official_reference.py [--video] EXPORTED.pt OUT.pt

Image (default): `build_sam3_image_model(checkpoint_path=EXPORTED, load_from_HF=False)` (its loader
strips `detector.` and ignores the rest), whose state dict is then compared key by key with the
file's `detector.*` tensors, and the reference forward runs. OUT.pt: `tensors` (the reference keys),
`missing` / `not_equal` (image-model keys the file did not fill, or filled with other values), `timing`.
`--video`: only `build_sam3_video_model(checkpoint_path=EXPORTED, load_from_HF=False)`, which loads
strictly (any missing or unexpected key raises); OUT.pt: `video_loaded`, `n_keys`, `timing`. A separate
run, because Meta's video model is not freed when dropped (4 GB would stay resident under the image run).
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import time
import warnings

import torch


def _load_script(path: str):
    spec = importlib.util.spec_from_file_location("official_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare_with_file(model: torch.nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Image-model keys the file's `detector.*` tensors did not fill, and those it filled with other values.
    A function of its own so that the memory-mapped file is released on return."""
    exported = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
    missing, not_equal = [], []
    for key, tensor in model.state_dict().items():
        source = exported.get("detector." + key)
        if source is None:
            missing.append(key)
        elif source.dtype != tensor.dtype or not torch.equal(source, tensor):
            not_equal.append(key)
    return missing, not_equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exported")
    parser.add_argument("out")
    parser.add_argument("--reference-script", required=True, help="shared/tools/official_reference.py")
    parser.add_argument("--video", action="store_true", help="also load the file into Meta's video model (strict)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    ref = _load_script(args.reference_script)
    from sam3.model_builder import build_sam3_image_model, build_sam3_video_model

    bpe = ref.find_bpe(None)
    timing = {}
    with ref.CudaToCpu():
        start = time.time()
        if args.video:
            video = build_sam3_video_model(
                checkpoint_path=args.exported, load_from_HF=False, bpe_path=bpe, device="cpu"
            )
            timing["video_build_and_load_s"] = time.time() - start
            n_keys = len(video.state_dict())
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            torch.save({"video_loaded": True, "n_keys": n_keys, "timing": timing, "peak_rss_gb": peak}, args.out)
            return
        model = build_sam3_image_model(
            bpe_path=bpe,
            device="cpu",
            eval_mode=True,
            checkpoint_path=args.exported,
            load_from_HF=False,
            enable_segmentation=True,
            enable_inst_interactivity=False,
            compile=False,
        )
        timing["image_build_and_load_s"] = time.time() - start
        missing, not_equal = _compare_with_file(model, args.exported)
        model.eval()
        out, forward_timing = ref.reference_forward(model)
    timing.update(forward_timing)
    torch.save(
        {
            "tensors": out["tensors"],
            "missing": missing,
            "not_equal": not_equal,
            "timing": timing,
            "threads": torch.get_num_threads(),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
