"""Images per second of the grounding pipeline: eager vs `torch.export` program vs AOTInductor package,
measured side by side in one run on the same inputs (text prompts, fp32, `torch.no_grad`).

Per preset: build (random weights), export with `sam3.export.export_model`, AOTInductor-compile, then
time each of the three on B images x P prompts (median of `--iters` calls after one warm-up), and
print images/s and the ratios to eager. `--bf16` adds the three again with bfloat16 autocast (useful
on a GPU), `--bf16-only` times those alone. AOTInductor compilation of the full preset takes minutes on
a CPU; `--no-aoti` skips it.

    python bench/export.py --presets tiny:224 sam3:1008 --images 2 --prompts 2 --iters 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sam3.export import ExportableSam3, compile_aoti, example_inputs, export_model
from sam3.model_builder import apply_runtime_policy, build_model

PROMPTS = ("a red car", "dog", "the person on the left", "boat")


def images_per_second(runs: dict, args: tuple[torch.Tensor, ...], iters: int) -> dict[str, float]:
    """Median images/s of each `run(*args)` over `iters` rounds (one call of each per round, interleaved
    so that load from other processes hits all alike), after one warm-up call each."""
    times: dict[str, list[float]] = {kind: [] for kind in runs}
    with torch.no_grad():
        for run in runs.values():
            run(*args)
        for _ in range(iters):
            for kind, run in runs.items():
                if args[0].is_cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run(*args)
                if args[0].is_cuda:
                    torch.cuda.synchronize()
                times[kind].append(time.perf_counter() - start)
    return {kind: args[0].shape[0] / statistics.median(t) for kind, t in times.items()}


def bench_preset(name: str, image_size: int, a: argparse.Namespace, folder: Path) -> None:
    device = torch.device(a.device)
    with torch.device(device):  # parameters initialised where they run: seconds for sam3 on a GPU
        model = apply_runtime_policy(build_model(name), eval_mode=True).to(device)
    example = example_inputs(model, image_size=image_size)  # 2 images x 2 prompts: B, P stay dynamic
    check = example_inputs(model, image_size=image_size, num_images=a.images, prompts=PROMPTS[: a.prompts], seed=1)
    for use_bf16 in (True,) if a.bf16_only else (False, True) if a.bf16 else (False,):
        label = f"{name} {image_size}px {'bf16' if use_bf16 else 'fp32'} B={a.images} P={a.prompts} {device.type}"
        start = time.perf_counter()
        program = export_model(model, example, use_bf16=use_bf16)
        export_s = time.perf_counter() - start
        rows = {
            "eager": ExportableSam3(model, use_bf16=use_bf16),
            "exported": program.module(),
        }
        if a.aoti:
            from torch._inductor import aoti_load_package

            start = time.perf_counter()
            package = compile_aoti(program, folder / f"{name}_{image_size}_{int(use_bf16)}.aoti.pt2")
            aoti_s = time.perf_counter() - start
            rows["aoti"] = aoti_load_package(str(package))
        saved = folder / f"{name}_{image_size}_{int(use_bf16)}.pt2"
        torch.export.save(program, saved)
        sizes = f"artifact {saved.stat().st_size / 2**20:.0f} MB"
        if a.aoti:
            sizes += f", AOTI package {package.stat().st_size / 2**20:.0f} MB"
        rates = images_per_second(rows, check.as_args(), a.iters)
        print(f"{label}: export {export_s:.1f} s" + (f", AOTI compile {aoti_s:.1f} s" if a.aoti else "") + f"; {sizes}")
        for kind, rate in rates.items():
            print(f"  {kind:9s} {rate:8.3f} images/s  x{rate / rates['eager']:.2f} of eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny:224", "sam3:1008"], help="NAME:IMAGE_SIZE")
    parser.add_argument("--images", type=int, default=2, help="B images per call")
    parser.add_argument("--prompts", type=int, default=2, help="P text prompts per call")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast exports")
    parser.add_argument("--bf16-only", action="store_true", help="time only the bfloat16 autocast exports")
    parser.add_argument("--no-aoti", dest="aoti", action="store_false", help="skip AOTInductor")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as folder:
        for spec in a.presets:
            name, size = spec.split(":")
            bench_preset(name, int(size), a, Path(folder))


if __name__ == "__main__":
    main()
