"""GPU benchmark suite: one run, one table, under 8 minutes on one H100 / H200.

    bench/gpu_suite.sh [--quick] [--peak-tflops 989] [--parts step,memory,...]
    bench/gpu_suite.sh --allow-cpu --quick         # the same code paths on CPU, tiny model (tests)

Parts, each in its own process with a hard time limit (`BUDGET_S`, 470 s in all), so that a crash,
an out-of-memory or a hang becomes one row of the table instead of ending the suite:

- step: the full preset (`roboflow_video_ft`, random weights, activation checkpointing as the config
  sets it) built as training builds it, one synthetic clip (`memory_plan.synthetic_batch`), the real
  `forward_backward` with the real criterion under bf16 autocast: s/frame, and MFU = model FLOP/s /
  the device's dense bf16 peak (FLOPs counted by `FlopCounterMode` on a 1-frame step without
  recomputation; the peak from `PEAK_BF16_TFLOPS` by device name, or `--peak-tflops`).
- memory: peak allocated memory of one training step (forward, backward, AdamW step) at 1, 2 and 4
  frames, with and without activation checkpointing, beside `sam3.tools.memory_plan`'s prediction.
- sharding: `bench/frame_sharding.py --devices cuda` (tiny model, W = 1 and 2 gloo ranks; with one
  GPU the two ranks share it), its `ratios:` line.
- matcher: the Hungarian matcher and the configured criterion (o2m head, 6-layer stack, masks) at
  training sizes: 8 frames x 8 prompts = 64 pairs, 200 queries, 288 x 288 mask logits.
- export: `bench/export.py` on the full preset in bf16, eager vs `torch.export` program (the export
  alone takes about 100 s).
- aoti: `bench/export.py` with AOTInductor (fp32) on the tiny preset at 224 px: the full preset's
  compile (minutes) does not fit the 8 minutes; `python bench/export.py --presets sam3:1008 --device
  cuda --bf16` times it on its own.

`--quick` runs every part with the tiny model at small sizes (smoke runs, the `gpu` tests). Without
CUDA the suite refuses to run unless `--allow-cpu`, which implies `--quick` and multiplies the
budgets by `CPU_BUDGET_SCALE` (its numbers only show that the code paths run).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("step", "memory", "sharding", "matcher", "export", "aoti")
# Hard limit per part (seconds, process start and model build included): 470 s in all.
BUDGET_S = {"step": 75, "memory": 110, "sharding": 55, "matcher": 25, "export": 165, "aoti": 40}
# Dense bf16 tensor-core peak, TFLOP/s, by a substring of `torch.cuda.get_device_name()`; first match wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
CONFIG_NAME = "roboflow_video_ft"
QUICK_OVERRIDES = ["model=tiny", "data.image_size=112", "data.train.prompts.max_prompts=2"]
GIB = 2**30
CPU_BUDGET_SCALE = 4  # --allow-cpu: budgets x4 (a shared CPU runs even the tiny model slowly)
CHILD_GRACE_S = 5.0  # a benchmark script run in-process (tests) outlives the part's deadline by this much


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    part: str
    metric: str
    value: str
    notes: str = ""


@dataclass(frozen=True)
class Options:
    """What every part is told.

    Attributes:
        device: "cuda" or "cpu".
        quick: tiny model, small sizes.
        peak_tflops: the device's dense bf16 peak, or None to look it up by name.
        deadline: `time.monotonic()` after which a part skips its remaining measurements.
        end: `time.monotonic()` by which a benchmark script the part runs must have finished (the
            part is killed a little later); None: `CHILD_GRACE_S` after `deadline`.
    """

    device: str
    quick: bool
    peak_tflops: float | None
    deadline: float
    end: float | None = None

    def left_s(self) -> float:
        return self.deadline - time.monotonic()


def run_part(name: str, options: Options) -> list[Row]:
    """Runs one part in this process and returns its rows (raises on failure)."""
    return PART_FUNCTIONS[name](options)


def step_part(options: Options) -> list[Row]:
    """Full preset forward + backward in bf16 autocast: s/frame and MFU."""
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    from sam3.model_builder import apply_runtime_policy
    from sam3.tools.memory_plan import prompts_per_frame, synthetic_batch
    from sam3.train.step import forward_backward

    device = torch.device(options.device)
    cfg = suite_config(options)
    frames = 2 if options.quick else 4
    prompts, image_size = prompts_per_frame(cfg, 4), int(cfg.data.image_size)
    model = build_on(cfg, device)
    criterion = instantiate(cfg.loss).to(device)
    batch = synthetic_batch(frames, prompts, image_size)

    def step(clip, step_idx: int) -> None:
        forward_backward(model, criterion, [clip], step=step_idx, device=device, autocast_dtype=torch.bfloat16)
        model.zero_grad(set_to_none=True)

    times = timed_s(lambda i: step(batch, i), repeats=1 if options.quick else 3, warmup=1, options=options)
    s_per_frame = statistics.median(times) / frames
    act_checkpoint = bool(cfg.runtime.act_checkpoint)
    label = f"{'tiny' if options.quick else 'full'} {image_size}px, T={frames}, {prompts} prompts, act ckpt {act_checkpoint}"
    rows = [Row("step", "fwd+bwd s/frame (bf16)", f"{s_per_frame:.4f}", f"{label}, median of {len(times)}")]

    # Model FLOPs of one frame: no recomputation (checkpointing off), the text encoder included.
    apply_runtime_policy(model, act_checkpoint=False)
    with FlopCounterMode(display=False) as counter:
        step(synthetic_batch(1, prompts, image_size), 0)
    apply_runtime_policy(model, act_checkpoint=act_checkpoint)
    flops = counter.get_total_flops()
    rows.append(Row("step", "model TFLOP/frame", f"{flops / 1e12:.3f}", "FlopCounterMode, 1-frame fwd+bwd"))
    peak, source = peak_tflops(options)
    if peak is None:
        rows.append(Row("step", "MFU", "n/a", source))
    else:
        achieved = flops / s_per_frame / 1e12
        rows.append(
            Row("step", "MFU", f"{100 * achieved / peak:.1f}%", f"{achieved:.1f} of {peak:.0f} TFLOP/s ({source})")
        )
    return rows


def memory_part(options: Options) -> list[Row]:
    """Peak memory of one training step per clip length, with and without activation checkpointing,
    beside `memory_plan`'s prediction."""
    from hydra.utils import instantiate

    from sam3.model_builder import apply_runtime_policy
    from sam3.tools.memory_plan import compose_run_config, plan_memory, prompts_per_frame, synthetic_batch
    from sam3.train.optim import build_optimizer
    from sam3.train.step import forward_backward

    device = torch.device(options.device)
    base = suite_overrides(options)
    cfg = suite_config(options)
    prompts, image_size = prompts_per_frame(cfg, 4), int(cfg.data.image_size)
    model = build_on(cfg, device)
    criterion = instantiate(cfg.loss).to(device)
    optimizer = build_optimizer(model, instantiate(cfg.optim.optimizer, _convert_="all"))

    def train_step(frames: int) -> None:
        forward_backward(
            model, criterion, [synthetic_batch(frames, prompts, image_size)], 0, device, autocast_dtype=torch.bfloat16
        )
        optimizer.step()
        model.zero_grad(set_to_none=True)

    train_step(1)  # creates AdamW's state, which the plan counts
    rows = []
    unit = "allocated" if device.type == "cuda" else "process RSS (CPU: not comparable to the plan)"
    for act_checkpoint in (True, False):
        ckpt_cfg = compose_run_config(CONFIG_NAME, [*base, f"runtime.act_checkpoint={str(act_checkpoint).lower()}"])
        plan = plan_memory(ckpt_cfg, ranks=1, amp="bf16", prompts=prompts, fused_attention=device.type == "cuda")
        apply_runtime_policy(model, act_checkpoint=act_checkpoint)
        for frames in (1, 2) if options.quick else (1, 2, 4):
            metric = f"peak GiB, T={frames}, act ckpt {'on' if act_checkpoint else 'off'}"
            planned = f"plan {plan.peak_bytes(frames) / GIB:.2f} GiB"
            if options.left_s() < 0:
                rows.append(Row("memory", metric, "skipped", f"part over its time budget; {planned}"))
                continue
            try:
                measured = measured_peak_bytes(device, lambda frames=frames: train_step(frames))
            except torch.OutOfMemoryError:
                model.zero_grad(set_to_none=True)
                rows.append(Row("memory", metric, "OOM", planned))
                continue
            ratio = measured / max(plan.peak_bytes(frames), 1)
            rows.append(Row("memory", metric, f"{measured / GIB:.2f}", f"{planned}, measured/plan {ratio:.2f}; {unit}"))
    return rows


def sharding_part(options: Options) -> list[Row]:
    """`bench/frame_sharding.py` on this device, its step times and `ratios:` line."""
    size = (
        ["--frames", "2", "--image-size", "112", "--repeats", "1", "--rounds", "1"]
        if options.quick
        else ["--frames", "8", "--repeats", "2", "--rounds", "3"]
    )
    command = [sys.executable, str(ROOT / "bench" / "frame_sharding.py"), "--devices", options.device, *size]
    output = run_child(command, options)
    header = re.search(r"^== .*==$", output, re.MULTILINE)
    notes = header.group(0).strip("= ") if header else ""
    if options.device == "cuda" and torch.cuda.device_count() < 2:
        notes += "; W=2: both ranks share the one GPU (gloo), a contention figure, not scaling"
    rows = []
    for world_size, step_s in re.findall(r"^W=(\d): ([\d.]+) s/step", output, re.MULTILINE):
        rows.append(Row("sharding", f"W={world_size} step s", step_s, notes))
    ratios = re.search(r"^ratios: (.*)$", output, re.MULTILINE)
    if ratios is None:
        raise RuntimeError(f"bench/frame_sharding.py printed no `ratios:` line; its output:\n{output[-2000:]}")
    for ratio in ratios.group(1).split("; "):  # "W=2 vs W=1 step speedup 0.40x; ..."
        name, _, value = ratio.rpartition(" ")
        rows.append(Row("sharding", name, value, "ratios: line"))
    return rows


def matcher_part(options: Options) -> list[Row]:
    """Matcher and criterion (o2m head, 6-layer stack, masks) on this device at training sizes."""
    from hydra.utils import instantiate

    from sam3.loss.normalization import LossNormalization
    from sam3.structures import BitMasks

    bench = load_bench("matcher")
    device = torch.device(options.device)
    sizes = (
        {
            "frames": 2,
            "prompts": 2,
            "queries": 20,
            "max_targets": 4,
            "zero_pairs": 1,
            "mask_side": 32,
            "target_side": 112,
        }
        if options.quick
        else {
            "frames": 8,
            "prompts": 8,
            "queries": 200,
            "max_targets": 20,
            "zero_pairs": 4,
            "mask_side": 288,
            "target_side": 1008,
        }
    )
    mask_side, target_side = sizes.pop("mask_side"), sizes.pop("target_side")
    problem = argparse.Namespace(seed=0, layers=6, **sizes)
    head, targets, layers = bench.build_problem(problem)
    head = {k: v.to(device) for k, v in head.items()}
    layers = [{k: v.to(device) for k, v in layer.items()} for layer in layers]
    visible_masks = box_masks(targets.boxes_padded, target_side)[targets.is_visible_padded]  # (Nvis, H, W)
    targets = dataclasses.replace(targets, masks=BitMasks.pack(visible_masks)).to(device)
    num_pairs = len(targets)
    generator = torch.Generator(device=device).manual_seed(0)
    mask_logits = [
        torch.randn(num_pairs, problem.queries, mask_side, mask_side, generator=generator, device=device)
        for _ in range(2)
    ]
    criterion = instantiate(suite_config(options).loss).to(device)
    normalization = LossNormalization.local(targets)

    def loss(grad: bool) -> Callable[[int], None]:
        def run(step_idx: int) -> None:
            outputs = bench.stack_output(layers, grad)
            outputs.pred_masks = mask_logits[0].clone().requires_grad_(grad)
            outputs.o2m.pred_masks = mask_logits[1].clone().requires_grad_(grad)
            total, _ = criterion(outputs, targets, normalization, step=step_idx)
            if grad:
                total.backward()

        return run

    o2o = bench.as_output(head)
    repeats = 3 if options.quick else 10
    label = (
        f"{num_pairs} pairs ({problem.frames} frames x {problem.prompts} prompts), Q={problem.queries}, "
        f"masks {mask_side}^2 vs targets {target_side}^2"
    )
    rows = []
    for metric, fn in (
        ("o2o matcher ms", lambda i: criterion.matcher(o2o, targets)),
        ("criterion fwd ms", loss(False)),
        ("criterion fwd+bwd ms", loss(True)),
    ):
        times = timed_s(fn, repeats=repeats, warmup=1, options=options)
        rows.append(Row("matcher", metric, f"{1e3 * statistics.median(times):.2f}", f"{label}; median of {len(times)}"))
    return rows


def export_part(options: Options) -> list[Row]:
    """`bench/export.py`: eager vs exported program, images/s, fp32 and bf16."""
    return export_rows("export", options, aoti=False)


def aoti_part(options: Options) -> list[Row]:
    """`bench/export.py` with AOTInductor (fp32), images/s beside eager."""
    if options.device == "cpu":
        return [Row("aoti", "images/s", "skipped", "CPU: the AOTInductor C++ compile takes minutes; runs on CUDA")]
    return export_rows("aoti", options, aoti=True)


def export_rows(part: str, options: Options, *, aoti: bool) -> list[Row]:
    if importlib.util.find_spec("sam3.export") is None or not (ROOT / "bench" / "export.py").exists():
        return [Row(part, "images/s", "skipped", "sam3.export or bench/export.py is absent")]
    if aoti:  # fp32 only
        preset, flags = ("tiny:112" if options.quick else "tiny:224"), []
    elif options.quick:  # on CPU fp32 only, for time
        preset, flags = "tiny:112", ["--no-aoti"] + (["--bf16"] if options.device == "cuda" else [])
    else:
        preset, flags = "sam3:1008", ["--no-aoti", "--bf16-only"]
    command = [
        sys.executable, str(ROOT / "bench" / "export.py"), "--presets", preset, "--device", options.device,
        "--images", "1", "--prompts", "1", "--iters", "1" if options.quick else "3", *flags,
    ]  # fmt: skip
    output = run_child(command, options)
    rows = []
    for label, block in re.findall(r"^(\S+ \S+ (?:fp32|bf16) .*?): (.*?)(?=^\S|\Z)", output, re.MULTILINE | re.DOTALL):
        dtype = "bf16" if " bf16 " in label else "fp32"
        first, *rates = block.strip().splitlines()
        for kind, rate, ratio in (re.match(r"\s*(\S+)\s+([\d.]+) images/s\s+(x[\d.]+)", r).groups() for r in rates):
            if aoti and kind == "exported":
                continue
            rows.append(Row(part, f"{kind} {dtype} images/s", rate, f"{ratio} of eager; {label}; {first.strip()}"))
    if not rows:
        raise RuntimeError(f"bench/export.py printed no images/s line; its output:\n{output[-2000:]}")
    return rows


PART_FUNCTIONS: dict[str, Callable[[Options], list[Row]]] = {
    "step": step_part,
    "memory": memory_part,
    "sharding": sharding_part,
    "matcher": matcher_part,
    "export": export_part,
    "aoti": aoti_part,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small sizes (smoke run)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU without CUDA (implies --quick)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in a child process
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown part(s) {unknown}; valid parts: {','.join(PARTS)}")
    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu:
        device, args.quick = "cpu", True
    else:
        print(
            "gpu_suite: no CUDA device is available (torch.cuda.is_available() is False). The suite measures a "
            "GPU; run it on one, or pass --allow-cpu to run the same code paths on CPU with the tiny model.",
            file=sys.stderr,
        )
        return 2
    if args.part:  # child: one part, rows as JSON
        now = time.monotonic()
        options = Options(
            device, args.quick, args.peak_tflops, deadline=now + 0.8 * args.budget_s, end=now + args.budget_s - 5
        )
        rows = run_part(args.part, options)
        args.rows_out.write_text(json.dumps([dataclasses.asdict(r) for r in rows]))
        return 0
    start = time.monotonic()
    scale = CPU_BUDGET_SCALE if device == "cpu" else 1
    rows = [Row("suite", "device", device_name(device), f"torch {torch.__version__}{', quick' if args.quick else ''}")]
    for part in parts:
        rows += run_isolated(part, args, budget_s=scale * BUDGET_S[part])
    budget = f"budget {scale * sum(BUDGET_S[p] for p in parts)} s" + (f" (x{scale} on CPU)" if scale > 1 else "")
    rows.append(Row("suite", "total wall s", f"{time.monotonic() - start:.0f}", budget))
    print(format_table(rows))
    return 0


def run_isolated(part: str, args: argparse.Namespace, budget_s: float) -> list[Row]:
    """Runs `part` in a child process killed after `budget_s`; a failure becomes one row."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        rows_out = Path(folder) / "rows.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--rows-out", str(rows_out)]
        command += ["--budget-s", str(budget_s)] + (["--quick"] if args.quick else [])
        command += ["--allow-cpu"] if args.allow_cpu else []
        command += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
        try:
            done = run_process_group(command, timeout_s=budget_s)
        except subprocess.TimeoutExpired:
            return [Row(part, "error", "timeout", f"killed after its {budget_s:.0f} s budget")]
        took = f"{time.monotonic() - start:.0f}"
        if done.returncode != 0 or not rows_out.exists():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {done.returncode}, no output"
            return [Row(part, "error", f"exit {done.returncode}", f"{reason[:300]} (after {took} s)")]
        rows = [Row(**row) for row in json.loads(rows_out.read_text())]
    return [*rows, Row(part, "part wall s", took, f"budget {budget_s:.0f} s")]


def format_table(rows: list[Row]) -> str:
    header = Row("part", "metric", "value", "notes")
    widths = [max(len(getattr(r, f)) for r in (header, *rows)) for f in ("part", "metric", "value")]
    lines = []
    for i, row in enumerate((header, *rows)):
        cells = [row.part.ljust(widths[0]), row.metric.ljust(widths[1]), row.value.rjust(widths[2]), row.notes]
        lines.append(" | ".join(cells).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in (*widths, max(len(r.notes) for r in rows))))
    return "\n".join(lines)


def build_on(cfg, device: torch.device) -> torch.nn.Module:
    """The run's model as training builds it, in train mode, its parameters created on `device` (the
    full preset initialises in seconds on a GPU, not a minute on the CPU)."""
    from sam3.train.entry import build_model

    with torch.device(device):
        return build_model(cfg, device).train()


def suite_overrides(options: Options) -> list[str]:
    return QUICK_OVERRIDES if options.quick else []


def suite_config(options: Options):
    """The run config of `CONFIG_NAME` (weights not loaded), tiny in quick mode."""
    from sam3.tools.memory_plan import compose_run_config

    return compose_run_config(CONFIG_NAME, suite_overrides(options))


def timed_s(fn: Callable[[int], None], *, repeats: int, warmup: int, options: Options) -> list[float]:
    """Seconds of each of `repeats` calls `fn(i)` after `warmup` calls, the device synchronised; stops
    early (keeping at least one timing) once the part is past its deadline."""
    times: list[float] = []
    for i in range(warmup + repeats):
        synchronize(options.device)
        start = time.perf_counter()
        fn(i)
        synchronize(options.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if times and options.left_s() < 0:
            break
    if not times:
        raise RuntimeError("no timed run: the warm-up took the whole budget")
    return times


def measured_peak_bytes(device: torch.device, fn: Callable[[], None]) -> int:
    """Peak memory while `fn()` runs: allocated bytes on CUDA, the process's peak RSS on CPU (Linux)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # the peak counter restarts from the current size
    fn()
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def box_masks(boxes_cxcywh: torch.Tensor, side: int) -> torch.Tensor:
    """(Npairs, N, side, side) bool: each box filled, as target masks at the input resolution."""
    x0, y0 = (boxes_cxcywh[..., :2] - boxes_cxcywh[..., 2:] / 2).unbind(-1)
    x1, y1 = (boxes_cxcywh[..., :2] + boxes_cxcywh[..., 2:] / 2).unbind(-1)
    grid = (torch.arange(side) + 0.5) / side
    inside_x = (grid >= x0[..., None]) & (grid <= x1[..., None])  # (Npairs, N, W)
    inside_y = (grid >= y0[..., None]) & (grid <= y1[..., None])  # (Npairs, N, H)
    return inside_y[..., :, None] & inside_x[..., None, :]


def peak_tflops(options: Options) -> tuple[float | None, str]:
    """The dense bf16 peak and where it came from."""
    if options.peak_tflops:
        return options.peak_tflops, "--peak-tflops"
    name = device_name(options.device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"{key} dense bf16"
    known = ", ".join(key for key, _ in PEAK_BF16_TFLOPS)
    return None, f"peak of {name!r} unknown (table: {known}); pass --peak-tflops"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_process_group(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """`subprocess.run` in a new session whose whole process group (ranks spawned by the child
    included) is killed on timeout; raises `subprocess.TimeoutExpired` then."""
    with subprocess.Popen(
        command, env=child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def child_env() -> dict[str, str]:
    """This checkout first on the children's path, so they import its `sam3`."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def run_child(command: list[str], options: Options) -> str:
    """stdout of a benchmark script, killed at `options.end` (before the part itself is); raises
    with its stderr on failure."""
    end = options.end if options.end is not None else options.deadline + CHILD_GRACE_S
    try:
        done = run_process_group(command, timeout_s=max(end - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{Path(command[1]).name} did not finish within {error.timeout:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[1]).name} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return done.stdout


def load_bench(name: str):
    """A sibling script of bench/ as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
