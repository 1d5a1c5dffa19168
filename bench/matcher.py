"""Micro-benchmark of the matcher and the set criterion against Meta's official implementation.

Problem: the one of `../shared/tools/official_matcher_bench.py` (same seed, same box generator, same
draw order): 8 frames x 4 prompts = 32 (frame, prompt) pairs, 200 queries, 0..20 targets per pair
with 4 pairs forced empty, plus an o2m head and a 6-layer stack (final + 5 aux, each with o2m).

Rows (wall ms, median and min, one torch thread by default):
  o2o matcher batched (1 call over all pairs) and per-pair loop (32 calls);
  o2m matcher batched and per-pair loop;
  criterion over the 6-layer stack with o2m heads (matching included; boxes, IoU-aware BCE,
  presence): forward, and forward + backward.
With `--oracle-python` (the interpreter of a virtualenv with Meta's `sam3` installed), the shared
script runs first in a subprocess on the same problem and its numbers are printed beside ours with
the ratio Meta / ours.

    python bench/matcher.py --oracle-python /path/to/oracle/venv/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from sam3.loss import HungarianMatcher, OneToManyMatcher, build_criterion
from sam3.loss.normalization import LossNormalization
from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import DetectorOutput, PairIndex, PairTargets

SHARED_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "official_matcher_bench.py"



def rand_boxes(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Valid normalised cxcywh boxes (w, h in [0.02, 0.6], inside the image), the shared generator."""
    wh = 0.02 + 0.58 * torch.rand(*shape, 2, generator=g)
    centre = wh / 2 + (1 - wh) * torch.rand(*shape, 2, generator=g)
    return torch.cat([centre, wh], -1)


def build_problem(a: argparse.Namespace) -> tuple[dict[str, torch.Tensor], PairTargets, list[dict[str, torch.Tensor]]]:
    """The shared problem, drawn in the shared script's order: one head, targets, and the layer stack."""
    g = torch.Generator().manual_seed(a.seed)
    num_pairs = a.frames * a.prompts
    counts = torch.randint(0, a.max_targets + 1, (num_pairs,), generator=g)
    counts[torch.randperm(num_pairs, generator=g)[: a.zero_pairs]] = 0
    num_slots = int(counts.max())
    visible = torch.arange(num_slots)[None] < counts[:, None]  # (Npairs, N)
    boxes = torch.where(visible[..., None], rand_boxes(g, num_pairs, max(num_slots, 1))[:, :num_slots], torch.zeros(()))
    head = {}
    for suffix in ("", "_o2m"):
        head["pred_logits" + suffix] = torch.randn(num_pairs, a.queries, 1, generator=g)
        head["pred_boxes" + suffix] = rand_boxes(g, num_pairs, a.queries)
    head["presence_logit_dec"] = torch.randn(num_pairs, 1, generator=g)
    pair_ids = torch.arange(num_pairs)
    targets = PairTargets(
        pairs=PairIndex(
            clip_idx=torch.zeros(num_pairs, dtype=torch.int64),
            frame_slot=pair_ids // a.prompts,
            frame_idx=pair_ids // a.prompts,
            prompt_idx=pair_ids % a.prompts,
            text_idx=pair_ids % a.prompts,
        ),
        boxes_padded=boxes,
        is_visible_padded=visible,
        object_ids_padded=torch.where(visible, torch.arange(num_slots)[None], -1),
        num_boxes=counts,
        num_instances=counts.clone(),
        is_exhaustive=torch.ones(num_pairs, dtype=torch.bool),
        is_positive=counts > 0,
    )
    g = torch.Generator().manual_seed(a.seed + 1)
    layers = []
    for _ in range(a.layers):
        layers.append({
            "pred_logits": torch.randn(num_pairs, a.queries, 1, generator=g),
            "pred_boxes": rand_boxes(g, num_pairs, a.queries),
            "pred_logits_o2m": torch.randn(num_pairs, a.queries, 1, generator=g),
            "pred_boxes_o2m": rand_boxes(g, num_pairs, a.queries),
            "presence_logit_dec": torch.randn(num_pairs, 1, generator=g),
        })
    return head, targets, layers


def as_output(raw: dict[str, torch.Tensor], suffix: str = "") -> DetectorOutput:
    boxes = raw["pred_boxes" + suffix]
    return DetectorOutput(
        pred_logits=raw["pred_logits" + suffix],
        pred_boxes=boxes,
        pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes),
        presence_logit_dec=raw["presence_logit_dec"],
    )


def stack_output(layers: list[dict[str, torch.Tensor]], grad: bool) -> DetectorOutput:
    """Fresh leaves for every layer, as the model lays them out: last layer final, the others auxiliary,
    the o2m branch with its own auxiliary layers and the shared presence logit."""
    o2o, o2m = [], []
    for raw in layers:
        raw = {k: v.clone().requires_grad_(grad) for k, v in raw.items()}
        o2o.append(as_output(raw))
        o2m.append(as_output(raw, "_o2m"))
    final, final_o2m = o2o[-1], o2m[-1]
    final.aux_outputs, final_o2m.aux_outputs = o2o[:-1], o2m[:-1]
    final.o2m = final_o2m
    return final


def pair_slice(targets: PairTargets, i: int) -> PairTargets:
    """Targets of pair i alone, trimmed to its slots, as a collator would build them."""
    n = int(targets.num_instances[i])
    pairs = targets.pairs
    return PairTargets(
        pairs=PairIndex(*(getattr(pairs, f.name)[i : i + 1] for f in dataclasses.fields(pairs))),
        boxes_padded=targets.boxes_padded[i : i + 1, :n].contiguous(),
        is_visible_padded=targets.is_visible_padded[i : i + 1, :n].contiguous(),
        object_ids_padded=targets.object_ids_padded[i : i + 1, :n].contiguous(),
        num_boxes=targets.num_boxes[i : i + 1],
        num_instances=targets.num_instances[i : i + 1],
        is_exhaustive=targets.is_exhaustive[i : i + 1],
        is_positive=targets.is_positive[i : i + 1],
    )


def timed_ms(fn, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def run_meta(a: argparse.Namespace) -> dict | None:
    """Runs the shared script with the oracle interpreter; its JSON summary, or None."""
    if not a.oracle_python:
        return None
    if not SHARED_SCRIPT.exists():
        print(f"shared script {SHARED_SCRIPT} is absent; Meta's numbers are skipped")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "meta.json"
        cmd = [
            a.oracle_python, str(SHARED_SCRIPT), "--threads", str(a.threads), "--reps", str(a.reps),
            "--rounds", str(a.rounds), "--seed", str(a.seed), "--frames", str(a.frames), "--prompts", str(a.prompts),
            "--queries", str(a.queries), "--max-targets", str(a.max_targets), "--zero-pairs", str(a.zero_pairs),
            "--layers", str(a.layers), "--json-out", str(out),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--max-targets", type=int, default=20)
    ap.add_argument("--zero-pairs", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=60, help="timed runs per row, pooled over rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--oracle-python", default=None, help="python of a venv with Meta's sam3, to time it too")
    a = ap.parse_args()

    meta = run_meta(a)
    torch.set_num_threads(a.threads)
    head, targets, layers = build_problem(a)
    num_pairs = len(targets)
    o2o, o2m_head = as_output(head), as_output(head, "_o2m")
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0)
    o2m_matcher = OneToManyMatcher(alpha=0.3, threshold=0.4, topk=4)
    criterion = build_criterion()
    num_boxes = targets.total_boxes

    per_pair_targets = [pair_slice(targets, i) for i in range(num_pairs)]
    per_pair_o2o = [as_output({k: v[i : i + 1] for k, v in head.items()}) for i in range(num_pairs)]
    per_pair_o2m = [as_output({k: v[i : i + 1] for k, v in head.items()}, "_o2m") for i in range(num_pairs)]

    batched = matcher(o2o, targets)
    looped = [matcher(o, t) for o, t in zip(per_pair_o2o, per_pair_targets, strict=True)]
    loop_pairs = [(i, int(q)) for i, m in enumerate(looped) for q in m.query_idx]
    if loop_pairs != list(zip(batched.pair_idx.tolist(), batched.query_idx.tolist(), strict=True)):
        raise AssertionError("batched matching differs from the per-pair loop")
    num_o2m = len(o2m_matcher(o2m_head, targets))

    def loss(grad: bool):
        def run() -> None:
            total, _ = criterion(stack_output(layers, grad), targets, LossNormalization.local(targets))
            if grad:
                total.backward()
        return run

    L, P = a.layers, num_pairs
    rows = {
        "o2o matcher, batched": lambda: matcher(o2o, targets),
        "o2o matcher, per-pair loop": lambda: [matcher(o, t) for o, t in zip(per_pair_o2o, per_pair_targets, strict=True)],
        "o2m matcher, batched": lambda: o2m_matcher(o2m_head, targets),
        "o2m matcher, per-pair loop": lambda: [o2m_matcher(o, t) for o, t in zip(per_pair_o2m, per_pair_targets, strict=True)],
        f"stack {L} layers + o2m: loss fwd": loss(False),
        f"stack {L} layers + o2m: loss fwd+bwd": loss(True),
    }
    # Our row -> the shared script's row measuring the same thing.
    meta_rows = dict(zip(rows, [
        f"o2o matcher, batched (1 call, B={P})", f"o2o matcher, per pair ({P} calls, B=1)",
        f"o2m matcher, batched (1 call, B={P})", f"o2m matcher, per pair ({P} calls, B=1)",
        f"stack {L} layers: match+o2m+loss fwd", f"stack {L} layers: match+o2m+loss fwd+bwd",
    ], strict=True))
    samples: dict[str, list[float]] = {}
    per_round = max(1, -(-a.reps // a.rounds))
    for _ in range(a.rounds):
        for name, fn in rows.items():
            samples.setdefault(name, []).extend(timed_ms(fn, per_round, a.warmup))

    print(f"torch {torch.__version__}  threads {a.threads}  P={P} ({a.frames} frames x {a.prompts} prompts)"
          f"  Q={a.queries}")
    print(f"visible targets {num_boxes}  o2o matches {len(batched)}  o2m matches {num_o2m} (each query once)"
          + (f"  [Meta: o2o {meta['o2o_matches']}, o2m {meta['o2m_matches']}]" if meta else ""))
    header = f"{'wall ms, median (min)':<40s}{'ours':>18s}" + (f"{'Meta':>18s}{'Meta/ours':>11s}" if meta else "")
    print(header)
    print("-" * len(header))
    for name, times in samples.items():
        med = statistics.median(times)
        line = f"{name:<40s}{med:10.2f} ({min(times):5.2f})"
        if meta:
            key = meta_rows[name]
            meta_med = meta["median_ms"][key][str(a.threads)]
            line += f"{meta_med:10.2f} ({meta['min_ms'][key][str(a.threads)]:5.2f}){meta_med / med:10.1f}x"
        print(line)
    ratio = statistics.median(samples["o2o matcher, per-pair loop"]) / statistics.median(
        samples["o2o matcher, batched"]
    )
    print(f"ours: o2o per-pair loop / batched {ratio:.1f}x")


if __name__ == "__main__":
    main()
