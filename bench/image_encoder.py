"""Image encoder + neck speed: seconds per image of our ViT + feature pyramid beside Meta's `sam3==0.1.4`
ones, same seeded weights (SEEDED_INIT_V1) and input (FIXED_INPUT_V1), measured side by side in one run.

    python bench/image_encoder.py [--size 1008] [--repeats 3] [--threads 2] [--oracle-python PATH]
                                  [--shared-tools DIR] [--compile] [--no-meta]

Both sides compute the trunk and all four pyramid levels with their position encodings (Meta's neck always
does; our image model asks for three), in eval mode, fp32, on CPU, under `torch.inference_mode`. Each side
first runs one untimed forward (warm-up; its outputs are compared), then ours and Meta's alternate, the order
flipping every repeat (Meta's in a worker process of the oracle interpreter, `bench/_meta_image_encoder.py`,
idle while ours runs and vice versa); the median of each side's repeats is kept. Parity: per level, the
largest |ours - Meta's| over Meta's standard deviation (the parity tests hold the full model to 1e-4).
The last line is `ours/Meta X`, the ratio of the median wall times (below 1: ours is faster); the line before
gives the ratio of the median process CPU times, which a machine shared with other jobs disturbs less.

Before them, the compute floor: the forward's floating-point operations (FlopCounterMode on the meta
device) over this CPU's fp32 GEMM rate at the same thread count (the fastest of the trunk's linear
layers, through `F.linear` or oneDNN's kernel). Both encoders do the same arithmetic, so neither can run
faster than the floor, and `ours/Meta` cannot go below floor/Meta.

Meta's side needs the oracle interpreter (`--oracle-python`, default env SAM3_ORACLE_PYTHON, else
/tmp/refvenv/bin/python) and `official_reference.py` of the shared tools (`--shared-tools`, default env
SAM3_SHARED_TOOLS, else `shared/tools` in or beside the checkout); without them it is skipped, saying why.
Meta's trunk keeps RoPE tables for 1008 px only, so at other sizes ours runs alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench._oracle_worker import OracleWorker, start_worker
from sam3.model.neck import ViTDetNeck
from sam3.model_builder import model_config
from sam3.tools.seeded_init import fixed_input, seeded_tensor

logger = logging.getLogger(__name__)

META_SIZE = 1008
PREFIX = "backbone.vision_backbone."  # the image model's names, as the reference recipe seeds them


def build_neck(size: int) -> ViTDetNeck:
    """Our released-size vision backbone (trunk + one pyramid), default-initialised."""
    cfg = model_config("sam3").backbone.vision_backbone
    cfg.use_sam2_convs = False
    cfg.trunk.img_size = size
    return instantiate(cfg)


def build_ours(seed: int, size: int) -> ViTDetNeck:
    """`build_neck` with SEEDED_INIT_V1 weights, in eval mode."""
    neck = build_neck(size)
    with torch.no_grad():
        for key, tensor in neck.state_dict(keep_vars=True).items():
            if not tensor.is_complex():
                tensor.copy_(seeded_tensor(PREFIX + key, tensor.shape, seed=seed))
    return neck.eval()


class Ours:
    def __init__(self, seed: int, size: int, compile_trunk: bool) -> None:
        self.neck = build_ours(seed, size)
        if compile_trunk:
            self.neck.trunk.compile()

    @torch.inference_mode()
    def run(self, images: torch.Tensor) -> tuple[tuple[float, float], list[torch.Tensor]]:
        """((wall s, process CPU s), the pyramid levels) of one forward."""
        start, cpu_start = time.perf_counter(), time.process_time()
        features, _ = self.neck(images)
        return (time.perf_counter() - start, time.process_time() - cpu_start), features


class Meta:
    """Meta's side: the worker `bench/_meta_image_encoder.py` in the oracle interpreter; images and
    pyramid levels travel as `torch.save` files in its folder."""

    def __init__(self, worker: OracleWorker, images: torch.Tensor) -> None:
        self.worker = worker
        self.images = worker.workdir / "images.pt"
        torch.save(images, self.images)

    def run(self, keep_outputs: bool = False) -> tuple[tuple[float, float], list[torch.Tensor] | None]:
        """((wall s, process CPU s), the pyramid levels when `keep_outputs`) of one forward."""
        save = self.worker.workdir / "features.pt" if keep_outputs else None
        answer = self.worker.request({"images": str(self.images), "save": str(save) if save else None})
        features = torch.load(save, weights_only=True) if save else None
        return (answer["seconds"], answer["cpu_seconds"]), features


@dataclass
class ComputeFloor:
    """Floating-point operations of one forward, by kind, and this CPU's fp32 GEMM rate."""

    flops: dict[str, float]
    gemm_flops_per_s: float

    @property
    def seconds(self) -> float:
        return sum(self.flops.values()) / self.gemm_flops_per_s

    def describe(self) -> str:
        total = sum(self.flops.values())
        kinds = ", ".join(f"{name} {100 * flops / total:.0f}%" for name, flops in self.flops.items())
        return (
            f"compute: {total / 1e12:.2f} TFLOP per image ({kinds}); fp32 GEMM rate "
            f"{self.gemm_flops_per_s / 1e9:.0f} GFLOP/s -> floor {self.seconds:.2f} s"
        )


_FLOP_KINDS = {"aten.addmm": "linear layers", "aten.mm": "linear layers", "aten.bmm": "attention"}


def compute_floor(size: int) -> ComputeFloor:
    """The encoder's FLOPs at `size` px and the GEMM rate of this process's threads (see the module doc)."""
    with torch.device("meta"):
        neck = build_neck(size)
        images = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        neck(images)
    flops: dict[str, float] = {}
    for op, count in counter.get_flop_counts()["Global"].items():
        kind = _FLOP_KINDS.get(str(op), "convolutions" if "convolution" in str(op) else str(op))
        flops[kind] = flops.get(kind, 0.0) + count
    tokens = (size // 14) ** 2
    layers = [m for m in neck.trunk.blocks[0].modules() if isinstance(m, nn.Linear)]
    return ComputeFloor(flops, max(_gemm_rate(tokens, layer.in_features, layer.out_features) for layer in layers))


def _gemm_rate(tokens: int, in_features: int, out_features: int, repeats: int = 3) -> float:
    """FLOP/s of the faster fp32 linear kernel (`F.linear`, oneDNN's) on (tokens, in) x (in, out), best time."""
    x, weight, bias = (
        torch.randn(tokens, in_features),
        torch.randn(out_features, in_features),
        torch.randn(out_features),
    )
    kernels = [partial(F.linear, x, weight, bias)]
    if torch.backends.mkldnn.is_available():
        kernels.append(partial(torch.ops.mkldnn._linear_pointwise, x, weight, bias, "none", [], ""))
    best = float("inf")
    for kernel in kernels:
        kernel()
        for _ in range(repeats):
            start = time.perf_counter()
            kernel()
            best = min(best, time.perf_counter() - start)
    return 2 * tokens * in_features * out_features / best


def input_images(size: int) -> torch.Tensor:
    """FIXED_INPUT_V1 (1008 px), resampled bilinearly for other sizes."""
    images = fixed_input()
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1008, help="image side (px), a multiple of 14")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per side, median kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile our trunk (runtime.compile)")
    parser.add_argument("--oracle-python", default=os.environ.get("SAM3_ORACLE_PYTHON", "/tmp/refvenv/bin/python"))
    parser.add_argument("--shared-tools", type=Path, default=os.environ.get("SAM3_SHARED_TOOLS"))
    parser.add_argument("--no-meta", action="store_true", help="time our side only")
    args = parser.parse_args(argv)
    if args.size % 14:
        raise SystemExit(f"--size {args.size} is not a multiple of the patch size 14")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    images = input_images(args.size)
    floor = compute_floor(args.size)
    start = time.perf_counter()
    worker = None
    if args.size != META_SIZE:
        logger.warning("skipping Meta's side: its trunk runs at %d px only (fixed RoPE tables)", META_SIZE)
    else:
        worker = start_worker(args, "_meta_image_encoder.py", [], "Meta's encoder", logger)
    meta = Meta(worker, images) if worker else None
    ours = Ours(args.seed, args.size, args.compile)
    try:
        warm_ours, ours_features = ours.run(images)
        logger.info("ours warm-up: %.1f s", warm_ours[0])
        parity = []
        if meta:
            warm_meta, meta_features = meta.run(keep_outputs=True)
            logger.info("Meta's warm-up: %.1f s", warm_meta[0])
            for level, (a, b) in enumerate(zip(ours_features, meta_features, strict=True)):
                if a.shape != b.shape:
                    raise AssertionError(f"level {level}: shape {tuple(a.shape)} vs Meta's {tuple(b.shape)}")
                err, std = (a - b).abs().max().item(), b.std().item()
                parity.append((level, tuple(a.shape), err, std))
        del ours_features
        sides = {"ours": lambda: ours.run(images)[0]} | ({"meta": lambda: meta.run()[0]} if meta else {})
        seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
            for name in order:
                seconds[name].append(sides[name]())
                logger.info("repeat %d %s: %.2f s (CPU %.2f s)", repeat, name, *seconds[name][-1])
    finally:
        if worker:
            worker.close()
    wall = time.perf_counter() - start
    median = {name: statistics.median(wall for wall, _ in values) for name, values in seconds.items()}
    median_cpu = {name: statistics.median(cpu for _, cpu in values) for name, values in seconds.items()}
    compiled = ", trunk compiled" if args.compile else ""
    print(f"== image encoder + neck, {args.size} px, cpu, {args.threads} threads, fp32{compiled}, seeded weights ==")
    for name, values in seconds.items():
        walls = ", ".join(f"{wall:.2f}" for wall, _ in values)
        print(f"{name:>5}: median {median[name]:7.2f} s ({walls}); CPU time median {median_cpu[name]:7.2f} s")
    for level, shape, err, std in parity:
        print(f"level {level} {shape}: max |ours - Meta| {err:.3e}, Meta std {std:.3e}, ratio {err / std:.2e}")
    print(f"run took {wall:.0f} s")
    at_floor = ", ".join(f"{name} {median[name] / floor.seconds:.2f}x" for name in median)
    print(f"{floor.describe()}; median time / floor: {at_floor}")
    if "meta" in median:
        print(f"lowest possible ours/Meta (floor / Meta's median) {floor.seconds / median['meta']:.3f}")
        print(f"CPU time ours/Meta {median_cpu['ours'] / median_cpu['meta']:.3f} (less sensitive to a loaded machine)")
        print(f"ours/Meta {median['ours'] / median['meta']:.3f}")


if __name__ == "__main__":
    main()
