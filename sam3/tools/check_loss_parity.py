"""Check our set criterion against Meta's released SAM3 training loss, term by term, on random problems.

    python -m sam3.tools.check_loss_parity --oracle-python /path/to/oracle/bin/python --seed 0 [1 ...]

The oracle interpreter is that of a virtualenv with Meta's `sam3==0.1.4` and its training code
(`../shared/tools/ref_env.sh` prints or creates one). Meta's side runs there, in one subprocess for
all seeds (`sam3/tools/_meta_loss_oracle.py`, which imports nothing of ours); the two sides exchange
plain tensors through `torch.save` files.

Problem (from the seed): frames x prompts (frame, prompt) pairs, frame-major, with one negative prompt
(pairs without instances), a positive prompt hidden in one frame (a pair with invisible placeholders
only), a non-exhaustive prompt with visible boxes, sometimes a near-duplicate pair of instances; the
visible targets come first in each pair's slots (Meta's padded layout). 200 queries and 6 decoder
layers (final + 5 auxiliary), each with an o2m branch, laid out as both models output them in
training: a presence logit on every layer (Meta's `Sam3Image._update_scores_and_boxes` writes
`presence_logit_dec` into the auxiliary outputs too, and has no o2m twin of it; our o2m outputs share
the layer's logit), mask logits (32 x 32) on the final layer of both branches only (Meta's
`_run_segmentation_heads` writes `pred_masks_o2m` with `o2m_mask_predict`, on in its builder, and no
auxiliary masks), boolean target masks of 64 x 64 or 128 x 128. Some queries of every layer sit near
the targets, so both matchers find matches.

Compared, for every term (`loss_ce`, `presence_loss`, `loss_bbox`, `loss_giou`, `loss_mask`,
`loss_dice`), every layer (`_aux_i`) and the o2m branch (`_o2m`): Meta's `Sam3LossWrapper` with the
modules and weights of its released roboflow fine-tune config plus the dense mask loss of that config's
commented segmentation block, against `SetCriterion` with the matching settings and
`LossNormalization.local` (one process holds the whole step). Meta's o2m entries include the o2m
weight 2; ours are multiplied by it to compare. Then the total (Meta's `core_loss`, scaled by the
square root of the pairs as `scale_by_find_batch_size` does, against our total). A second round
switches on `weak_loss` on both sides and compares the classification terms. The assignments are
compared too: the one-to-one ones of every o2o layer and of the o2m auxiliary layers, and the final
o2m layer's one-to-many one. "Equal" means |ours - Meta| / max(|Meta|, 1e-12) below the tolerance.

Known differences, printed with their reason where they occur, never skipped silently:

* `weak_loss` denominator: ours is Q x exhaustive pairs + visible boxes of non-exhaustive pairs, known
  before the forward (one match per box); Meta's counts the entries it actually keeps, i.e. the matches
  of non-exhaustive pairs, which for the final o2m layer are its one-to-many matches. Where these
  differ (the assignments being identical), our sum is compared over Meta's denominator.
* Meta reports `presence_loss*_o2m` as 0 (its o2m outputs carry no presence logit); our criterion
  supervises presence on the o2o layers only and has no such term. Checked: Meta's value is 0.
* `ce_f1*` and `presence_dec_acc*` in Meta's dict are metrics outside the loss; not compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sam3.loss import (
    ClassificationLoss,
    HungarianMatcher,
    LossWeights,
    MaskLoss,
    Matches,
    OneToManyMatcher,
    SetCriterion,
)
from sam3.loss.normalization import LossNormalization
from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.structures import BitMasks, DetectorOutput, PairIndex, PairTargets

__all__ = ["ProblemConfig", "Problem", "build_problem", "build_our_criterion", "main"]

ORACLE_SCRIPT = Path(__file__).with_name("_meta_loss_oracle.py")
O2M_WEIGHT = 2.0
TERMS = ("loss_ce", "presence_loss", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
METRICS = ("ce_f1", "presence_dec_acc")  # entries of Meta's dict outside the loss

NOTES = {
    "B": "Meta's o2m outputs carry no presence logit (its model has no `presence_logit_dec_o2m`), so these "
    "entries are 0 placeholders; our criterion supervises presence on the o2o layers only. Checked: Meta's "
    "value is 0.",
    "C": "weak_loss denominator: ours is Q x exhaustive pairs + visible boxes of non-exhaustive pairs = "
    "{ours_kept} (known before the forward, one match per box); Meta's counts the entries it keeps: Q x "
    "exhaustive pairs + the {meta_nonex} (pair, query) entries its one-to-many matcher matched in "
    "non-exhaustive pairs = {meta_kept}. Compared instead: our sum over Meta's denominator.",
}


@dataclass(frozen=True)
class ProblemConfig:
    """Size of a random problem.

    Attributes:
        num_frames: frames of the clip (>= 3).
        num_prompts: prompts of the clip (>= 3: a negative, a non-exhaustive and a hidden one).
        num_queries: Q, queries per pair and branch. Meta's side pads its classification mean to 200
            queries (`pad_n_queries`, as the roboflow config does), which equals our mean at Q = 200 only.
        num_layers: decoder layers (final + auxiliary).
        max_instances: instances per positive prompt are drawn in [1, max_instances].
        pred_mask_size: side of the predicted mask logits.
        target_mask_sizes: the target mask side is drawn among these.
    """

    num_frames: int = 3
    num_prompts: int = 3
    num_queries: int = 200
    num_layers: int = 6
    max_instances: int = 4
    pred_mask_size: int = 32
    target_mask_sizes: tuple[int, ...] = (64, 128)

    def __post_init__(self) -> None:
        if self.num_frames < 3 or self.num_prompts < 3:
            raise ValueError(
                f"ProblemConfig: need >= 3 frames and >= 3 prompts (a negative, a non-exhaustive and a hidden "
                f"prompt), got {self.num_frames} frames x {self.num_prompts} prompts"
            )
        if self.num_layers < 2 or self.max_instances < 2:
            raise ValueError(
                f"ProblemConfig: need >= 2 layers and max_instances >= 2, got {self.num_layers} and "
                f"{self.max_instances}"
            )


@dataclass
class Problem:
    """A random step: the model's training outputs and the targets over the same pairs."""

    outputs: DetectorOutput
    targets: PairTargets
    seed: int

    @property
    def layers(self) -> list[DetectorOutput]:
        """The o2o layers, first to last."""
        return [*self.outputs.aux_outputs, self.outputs]

    @property
    def o2m_layers(self) -> list[DetectorOutput]:
        """The o2m layers, first to last."""
        assert self.outputs.o2m is not None, "problems carry an o2m branch"
        return [*self.outputs.o2m.aux_outputs, self.outputs.o2m]

    def describe(self) -> str:
        t = self.targets
        num_frames = int(t.pairs.frame_idx.max()) + 1
        num_prompts = int(t.pairs.prompt_idx.max()) + 1
        empty = t.num_boxes == 0
        assert t.masks is not None and self.outputs.pred_masks is not None, "problems carry masks"
        return (
            f"{num_frames} frames x {num_prompts} prompts = {len(t)} pairs, Q {self.outputs.num_queries}, "
            f"{len(self.layers)} decoder layers + o2m; {t.total_boxes} visible targets; "
            f"{int(empty.sum())} pairs without a visible target ({int((empty & (t.num_instances > 0)).sum())} "
            f"with invisible placeholders); {int((~t.is_exhaustive).sum())} non-exhaustive pairs "
            f"({int((~t.is_exhaustive & ~empty).sum())} with visible targets); masks "
            f"{tuple(self.outputs.pred_masks.shape[-2:])} predicted, {(t.masks.height, t.masks.width)} targets"
        )


def build_problem(seed: int, config: ProblemConfig = ProblemConfig()) -> Problem:
    """A random problem from `seed` (see the module docstring); everything is drawn from one generator."""
    g = torch.Generator().manual_seed(seed)
    num_frames, num_prompts, num_slots = config.num_frames, config.num_prompts, config.max_instances
    negative, partial, hidden = torch.randperm(num_prompts, generator=g)[:3].tolist()
    num_instances = torch.randint(1, num_slots + 1, (num_prompts,), generator=g)
    num_instances[negative] = 0
    exhaustive = torch.rand(num_prompts, generator=g) < 0.5
    exhaustive[negative] = exhaustive[hidden] = True
    exhaustive[partial] = False

    # Tracks: a start box per instance and a random walk over frames.
    start = _random_boxes(g, num_prompts, num_slots)  # (P, N, 4)
    tracks = start + (0.02 * torch.randn(num_frames, num_prompts, num_slots, 4, generator=g)).cumsum(0)  # (T, P, N, 4)
    twin = (torch.rand(num_prompts, generator=g) < 0.5) & (num_instances >= 2)  # a near-duplicate instance
    tracks[:, twin, 1] = tracks[:, twin, 0] + 0.005 * torch.randn(num_frames, int(twin.sum()), 4, generator=g)
    tracks = _clamp_boxes(tracks)
    is_slot = torch.arange(num_slots) < num_instances[:, None]  # (P, N)
    visible = (torch.rand(num_frames, num_prompts, num_slots, generator=g) < 0.75) & is_slot  # (T, P, N)
    hidden_frame = int(torch.randint(num_frames, (1,), generator=g))
    visible[hidden_frame, hidden] = False
    visible[(hidden_frame + 1) % num_frames, partial, 0] = True

    # Pairs frame-major; in each pair the visible instances first, then placeholders, then padding.
    order = torch.argsort((~visible).to(torch.int8), dim=-1, stable=True)  # (T, P, N)
    num_pairs = num_frames * num_prompts
    is_visible = visible.gather(-1, order).reshape(num_pairs, num_slots)
    boxes = tracks.gather(2, order[..., None].expand(-1, -1, -1, 4)).reshape(num_pairs, num_slots, 4)
    boxes = boxes * is_visible[..., None]
    pair_instances = num_instances.repeat(num_frames)  # (Npairs,)
    object_ids = torch.where(order < num_instances[None, :, None], order, -1).reshape(num_pairs, num_slots)
    num_used = max(int(num_instances.max()), 1)
    is_visible, boxes, object_ids = is_visible[:, :num_used], boxes[:, :num_used], object_ids[:, :num_used]
    mask_size = config.target_mask_sizes[int(torch.randint(len(config.target_mask_sizes), (1,), generator=g))]
    pair_ids = torch.arange(num_pairs)
    targets = PairTargets(
        pairs=PairIndex(
            clip_idx=torch.zeros(num_pairs, dtype=torch.int64),
            frame_slot=pair_ids // num_prompts,
            frame_idx=pair_ids // num_prompts,
            prompt_idx=pair_ids % num_prompts,
            text_idx=pair_ids % num_prompts,
        ),
        boxes_padded=boxes,
        is_visible_padded=is_visible,
        object_ids_padded=object_ids,
        num_boxes=is_visible.sum(1),
        num_instances=pair_instances,
        is_exhaustive=exhaustive.repeat(num_frames),
        is_positive=pair_instances > 0,
        masks=BitMasks.pack(_ellipse_masks(boxes[is_visible], mask_size)),  # (Nvis, S, S) visible only
    )

    o2o, o2m = [], []
    for layer in range(config.num_layers):
        spread = 0.15 * (config.num_layers - layer) / config.num_layers  # later layers closer to the targets
        heads = [_layer_predictions(g, targets, config.num_queries, spread) for _ in range(2)]
        presence = torch.randn(num_pairs, 1, generator=g) + 1.5 * (targets.num_boxes[:, None] > 0) - 0.75
        o2o.append(_output(*heads[0], presence))
        o2m.append(_output(*heads[1], presence))  # the o2m queries share the layer's presence logit
    for final in (o2o[-1], o2m[-1]):
        coarse = 3 * torch.randn(num_pairs * config.num_queries, 1, 8, 8, generator=g)
        size = config.pred_mask_size
        final.pred_masks = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).view(
            num_pairs, config.num_queries, size, size
        )
    outputs, outputs.aux_outputs = o2o[-1], o2o[:-1]
    outputs.o2m, outputs.o2m.aux_outputs = o2m[-1], o2m[:-1]
    return Problem(outputs=outputs, targets=targets, seed=seed)


def oracle_tensors(problem: Problem) -> dict[str, torch.Tensor]:
    """The problem as Meta's side reads it: per-layer predictions stacked (layer first), padded targets
    with the visible ones first in each pair, and the visible targets' masks packed."""
    targets = problem.targets
    first_slots = torch.arange(targets.is_visible_padded.shape[1]) < targets.num_boxes[:, None]
    if not torch.equal(targets.is_visible_padded, first_slots):
        raise ValueError("oracle_tensors: Meta's layout needs the visible targets first in each pair's slots")
    o2o, o2m = problem.layers, problem.o2m_layers
    assert problem.outputs.o2m is not None and targets.packed_masks is not None, "problems carry o2m and masks"
    return {
        "pred_logits": torch.stack([out.pred_logits for out in o2o]),  # (D, Npairs, Q, 1)
        "pred_boxes": torch.stack([out.pred_boxes for out in o2o]),  # (D, Npairs, Q, 4)
        "pred_logits_o2m": torch.stack([out.pred_logits for out in o2m]),
        "pred_boxes_o2m": torch.stack([out.pred_boxes for out in o2m]),
        "presence_logit_dec": torch.stack([out.presence_logit_dec for out in o2o]),  # (D, Npairs, 1)
        "pred_masks": problem.outputs.pred_masks,
        "pred_masks_o2m": problem.outputs.o2m.pred_masks,
        "boxes_padded": targets.boxes_padded,
        "num_boxes": targets.num_boxes,
        "object_ids_padded": targets.object_ids_padded,
        "is_exhaustive": targets.is_exhaustive,
        "masks": targets.packed_masks,  # (Nvis, H, W)
    }


def build_our_criterion(weak_loss: bool) -> SetCriterion:
    """`SetCriterion` with the settings of Meta's side (see `_meta_loss_oracle.build_wrapper`)."""
    return SetCriterion(
        matcher=HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0),
        o2m_matcher=OneToManyMatcher(alpha=0.3, threshold=0.4, topk=4),
        weights=LossWeights(
            loss_ce=20.0, presence_loss=20.0, loss_bbox=5.0, loss_giou=2.0, loss_mask=200.0, loss_dice=10.0
        ),
        classification=ClassificationLoss(pos_weight=10.0, weak_loss=weak_loss, alpha=0.25, gamma=2.0),
        masks=MaskLoss(focal_alpha=0.25, focal_gamma=2.0, num_points=None, on_aux=False),
        o2m_weight=O2M_WEIGHT,
        o2m_matcher_on_aux=False,
        scale_by_sqrt_pairs=True,
    )


def matches_from_rows(rows: torch.Tensor, num_boxes: torch.Tensor) -> Matches:
    """Meta's (3, M) (pair, query, packed target) rows as our `Matches` (target = slot in the pair,
    the visible targets being first in each pair)."""
    offsets = torch.cumsum(num_boxes, 0) - num_boxes  # (Npairs,) packed index of each pair's first target
    pair_idx, query_idx, packed = rows
    return Matches(pair_idx.clone(), query_idx.clone(), packed - offsets[pair_idx])


def assignment(matches: Matches) -> set[tuple[int, int, int]]:
    """The (pair, query, target slot) triples of an assignment."""
    return set(zip(matches.pair_idx.tolist(), matches.query_idx.tolist(), matches.target_idx.tolist(), strict=True))


def num_repeated_queries(matches: Matches) -> int:
    """Matches whose (pair, query) already appears in an earlier match."""
    return len(matches) - len(set(zip(matches.pair_idx.tolist(), matches.query_idx.tolist(), strict=True)))


@dataclass
class _Row:
    """One entry of the comparison: Meta's value, ours, and what decides the verdict.

    By default the relative difference of `ours` decides; with `alt`, the difference of another of our
    values (a known difference explained by `note`) decides instead; with `meta_must_be_zero`, Meta's
    value must be 0 (an entry we do not have by design).
    """

    name: str
    meta: float | None
    ours: float | None
    note: str = ""
    alt: tuple[str, float, float] | None = None  # (label, our value compared instead, Meta's value)
    meta_must_be_zero: bool = False

    @property
    def rel(self) -> float | None:
        return None if self.meta is None or self.ours is None else _rel(self.ours, self.meta)

    def decisive_rel(self) -> float | None:
        """The relative difference that decides the verdict, if one does."""
        if self.alt is not None:
            return _rel(self.alt[1], self.alt[2])
        return None if self.meta_must_be_zero else self.rel

    def passed(self, tolerance: float) -> bool:
        if self.meta_must_be_zero:
            return self.meta == 0.0
        rel = self.decisive_rel()
        return rel is not None and rel < tolerance


@dataclass
class SeedReport:
    """The printed comparison of one problem, its rows and its verdict."""

    lines: list[str] = field(default_factory=list)
    rows: list[_Row] = field(default_factory=list)
    passed: bool = True


@dataclass
class _OneToManyCheck:
    """Meta's final o2m assignment against ours."""

    meta: Matches
    ours: Matches

    @property
    def repeated(self) -> int:
        return num_repeated_queries(self.meta)

    @property
    def same(self) -> bool:
        return assignment(self.ours) == assignment(self.meta)


def check_problem(problem: Problem, meta: dict[str, torch.Tensor], tolerance: float) -> SeedReport:
    """Compares our criterion with Meta's results (`_meta_loss_oracle.run`) on one problem."""
    report = SeedReport()
    out = report.lines.append
    out(f"== seed {problem.seed}: {problem.describe()}")
    notes: dict[str, str] = {}
    o2m = _check_assignments(problem, meta, report)

    for round_name, weak_loss in (("strict", False), ("weak", True)):
        rows = _round_rows(problem, meta, round_name, weak_loss, o2m, notes)
        if weak_loss:
            title = "round 2: weak_loss=True on both sides, classification terms"
        else:
            title = "round 1: weak_loss=False (Meta's roboflow fine-tune config + dense masks)"
        out(f"{title}; o2m rows include the o2m weight {O2M_WEIGHT:g}, as Meta's dict does")
        out(f"  {'term':<24}{'Meta':>17}{'ours':>17}{'rel. diff':>11}")
        for row in rows:
            ok = row.passed(tolerance)
            report.passed &= ok
            rel = "" if row.rel is None else f"{row.rel:.1e}"
            if row.alt is not None:
                status = f"not counted [{row.note}]"
            else:
                status = ("ok" if ok else "FAIL") + (f" [{row.note}]" if row.note else "")
            out(f"  {row.name:<24}{_fmt(row.meta):>17}{_fmt(row.ours):>17}{rel:>11}  {status}")
            if row.alt is not None:
                label, value, reference = row.alt
                out(f"    {label:<39}{_fmt(value):>17}{_rel(value, reference):>11.1e}  {'ok' if ok else 'FAIL'}")
        report.rows.extend(dataclasses.replace(r, name=f"{round_name}: {r.name}") for r in rows)

    for tag in sorted(notes):
        out(f"[{tag}] {notes[tag]}")
    metrics = [k for k in meta if k.startswith("strict/") and k.split("/", 1)[1].startswith(METRICS)]
    out(f"not compared: {len(metrics)} metric entries of Meta's dict outside its loss ({', '.join(METRICS)})")
    out(f"seed {problem.seed}: {'PASS' if report.passed else 'FAIL'} at tolerance {tolerance:g}")
    return report


def _check_assignments(problem: Problem, meta: dict[str, torch.Tensor], report: SeedReport) -> _OneToManyCheck:
    """Compares every assignment with Meta's; prints one line, fails the report on a one-to-one difference."""
    targets = problem.targets
    criterion = build_our_criterion(weak_loss=False)
    assert criterion.o2m_matcher is not None, "the criterion has an o2m matcher"

    def same(ours: list[Matches], meta_prefix: str) -> list[bool]:
        return [
            assignment(m) == assignment(matches_from_rows(meta[f"{meta_prefix}/{d}"], targets.num_boxes))
            for d, m in enumerate(ours)
        ]

    o2o_same = same(criterion.matcher.match_heads(problem.layers, targets), "o2o")
    aux_same = same(criterion.matcher.match_heads(problem.o2m_layers[:-1], targets), "o2m_aux")
    o2m = _OneToManyCheck(
        meta=matches_from_rows(meta["o2m"], targets.num_boxes),
        ours=criterion.o2m_matcher(problem.o2m_layers[-1], targets),
    )
    o2m_text = "identical" if o2m.same else "DIFFERS"
    report.lines.append(
        f"assignments vs Meta's: o2o layers {sum(o2o_same)}/{len(o2o_same)} identical; o2m auxiliary layers "
        f"(one-to-one) {sum(aux_same)}/{len(aux_same)} identical; final o2m (one-to-many): Meta {len(o2m.meta)} "
        f"matches ({o2m.repeated} repeating a query), ours {len(o2m.ours)}: {o2m_text}"
    )
    if not all(o2o_same) or not all(aux_same) or not o2m.same:
        report.passed = False
        report.lines.append("FAIL: an assignment differs from Meta's (Hungarian near-tie or cost difference?)")
    return o2m


def _round_rows(
    problem: Problem,
    meta: dict[str, torch.Tensor],
    round_name: str,
    weak_loss: bool,
    o2m: _OneToManyCheck,
    notes: dict[str, str],
) -> list[_Row]:
    """The rows of one round: every loss term of either side (classification only with `weak_loss`),
    then the total; adds the notes it refers to."""
    targets = problem.targets
    normalization = LossNormalization.local(targets)
    meta_losses = {k.split("/", 1)[1]: float(v) for k, v in meta.items() if k.startswith(round_name + "/")}
    total, ours = _our_losses(problem, build_our_criterion(weak_loss), normalization)
    keys = [k for k in meta_losses if k != "core_loss" and not k.startswith(METRICS)]
    keys += [k for k in ours if k not in meta_losses]
    rows: list[_Row] = []
    for key in sorted(keys, key=_order):
        term, is_o2m, is_final = _parse(key)
        if weak_loss and term != "loss_ce":
            continue
        meta_value = meta_losses.get(key)
        if term == "presence_loss" and is_o2m and key not in ours:
            rows.append(_Row(key, meta_value, None, note="B", meta_must_be_zero=True))
            notes["B"] = NOTES["B"]
            continue
        weight = O2M_WEIGHT if is_o2m else 1.0
        if key not in ours or meta_value is None:
            side = "ours" if key not in ours else "Meta's dict"
            rows.append(_Row(key, meta_value, ours.get(key, math.nan) * weight, note=f"not in {side}"))
            continue
        row = _Row(key, meta_value, ours[key] * weight)
        if weak_loss and is_o2m and is_final:
            num_queries = problem.outputs.num_queries
            meta_kept, meta_nonex = _meta_weak_kept(targets, o2m.meta, num_queries)
            ours_kept = round(1.0 / normalization.entry_norm(num_queries, weak_loss=True))
            if meta_kept != ours_kept:
                row.note = "C"
                row.alt = ("over Meta's denominator", ours[key] * weight * ours_kept / meta_kept, meta_value)
                notes["C"] = NOTES["C"].format(ours_kept=ours_kept, meta_nonex=meta_nonex, meta_kept=meta_kept)
        rows.append(row)
    if not weak_loss:
        rows.append(_Row("total (core_loss)", meta_losses["core_loss"], total))
    return rows


def run_oracle(oracle_python: str, problems: Sequence[Problem], threads: int) -> list[dict[str, torch.Tensor]]:
    """Meta's results for every problem, from one subprocess of the oracle interpreter."""
    if not Path(oracle_python).exists():
        raise ValueError(
            f"oracle interpreter {oracle_python} does not exist; point --oracle-python at the python of a "
            "virtualenv with Meta's sam3==0.1.4 (../shared/tools/ref_env.sh prints or creates one)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"problem_{i}.pt" for i in range(len(problems))]
        for path, problem in zip(paths, problems, strict=True):
            torch.save(oracle_tensors(problem), path)
        cmd = [oracle_python, "-I", str(ORACLE_SCRIPT), "--threads", str(threads), *map(str, paths)]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"Meta's side failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")
        return [torch.load(path.with_suffix(".meta.pt"), weights_only=True) for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oracle-python", required=True, help="python of a virtualenv with Meta's sam3==0.1.4")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one problem per seed")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = ProblemConfig(num_frames=args.frames, num_prompts=args.prompts)
    problems = [build_problem(seed, config) for seed in args.seed]
    results = run_oracle(args.oracle_python, problems, args.threads)
    reports = [check_problem(problem, meta, args.tolerance) for problem, meta in zip(problems, results, strict=True)]
    for report in reports:
        print("\n".join(report.lines))
    if len(reports) > 1:
        worst: dict[str, float] = {}
        for report in reports:
            for row in report.rows:
                rel = row.decisive_rel()
                if rel is not None:
                    worst[row.name] = max(worst.get(row.name, 0.0), rel)
        print(f"max relative difference per compared value over seeds {args.seed}:")
        for name, rel in worst.items():
            print(f"  {name:<34}{rel:.1e}")
    passed = all(r.passed for r in reports)
    print(f"{'PASS' if passed else 'FAIL'}: {len(reports)} seed(s) at tolerance {args.tolerance:g}")
    return 0 if passed else 1


def _our_losses(
    problem: Problem, criterion: SetCriterion, normalization: LossNormalization
) -> tuple[float, dict[str, float]]:
    with torch.no_grad():
        total, parts = criterion(problem.outputs, problem.targets, normalization)
    return float(total), {k: float(v) for k, v in parts.items()}


def _meta_weak_kept(targets: PairTargets, meta_o2m: Matches, num_queries: int) -> tuple[int, int]:
    """Meta's weak-loss denominator of the final o2m layer (every entry of the exhaustive pairs and the
    distinct matched (pair, query) entries of the others), and that number of matched entries."""
    exhaustive = targets.is_exhaustive.tolist()
    matched = {
        (p, q)
        for p, q in zip(meta_o2m.pair_idx.tolist(), meta_o2m.query_idx.tolist(), strict=True)
        if not exhaustive[p]
    }
    return num_queries * sum(exhaustive) + len(matched), len(matched)


def _parse(key: str) -> tuple[str, bool, bool]:
    """(term, is_o2m, is_final layer) of a loss-dict key such as `loss_ce_aux_3_o2m`."""
    is_o2m = key.endswith("_o2m")
    base = key.removesuffix("_o2m")
    is_final = "_aux_" not in base
    return base.split("_aux_")[0], is_o2m, is_final


def _order(key: str) -> tuple[int, int, int]:
    term, is_o2m, is_final = _parse(key)
    layer = -1 if is_final else int(key.removesuffix("_o2m").rsplit("_", 1)[1])
    return (int(is_o2m), layer, TERMS.index(term) if term in TERMS else len(TERMS))


def _rel(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-12)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.8e}"


def _random_boxes(g: torch.Generator, *shape: int) -> torch.Tensor:
    """(*shape, 4) normalised cxcywh boxes inside the image, sides in [0.03, 0.5]."""
    wh = 0.03 + 0.47 * torch.rand(*shape, 2, generator=g)
    centre = wh / 2 + (1 - wh) * torch.rand(*shape, 2, generator=g)
    return torch.cat([centre, wh], -1)


def _clamp_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Valid cxcywh boxes as a sigmoid head would output them: all four in (0, 1), sides >= 0.01."""
    return torch.cat([boxes[..., :2].clamp(0.01, 0.99), boxes[..., 2:].clamp(0.01, 0.99)], -1)


def _ellipse_masks(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(..., size, size) bool: the ellipse inscribed in each cxcywh box."""
    centres = (torch.arange(size) + 0.5) / size
    cx, cy, w, h = boxes.unbind(-1)
    dx = (centres - cx[..., None]) / (w[..., None] / 2).clamp(min=1e-6)  # (..., W)
    dy = (centres - cy[..., None]) / (h[..., None] / 2).clamp(min=1e-6)  # (..., H)
    return dy[..., :, None].square() + dx[..., None, :].square() <= 1


def _layer_predictions(
    g: torch.Generator, targets: PairTargets, num_queries: int, spread: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (Npairs, Q, 1), boxes (Npairs, Q, 4)) of one layer: random queries, and 1..6 queries per
    visible target jittered around it (relative spread `spread`) with raised logits."""
    num_pairs = len(targets)
    logits = 1.5 * torch.randn(num_pairs, num_queries, 1, generator=g) - 1.0
    boxes = _random_boxes(g, num_pairs, num_queries)
    for pair, count in enumerate(targets.num_boxes.tolist()):
        if count == 0:
            continue
        per_target = torch.randint(1, 7, (count,), generator=g)
        queries = torch.randperm(num_queries, generator=g)[: int(per_target.sum())]
        near = targets.boxes_padded[pair, torch.repeat_interleave(torch.arange(count), per_target)]  # (k, 4)
        noise = spread * torch.randn(len(queries), 4, generator=g) * near[:, 2:].repeat(1, 2)
        boxes[pair, queries] = _clamp_boxes(near + noise)
        logits[pair, queries, 0] += 2.0 + torch.rand(len(queries), generator=g)
    return logits, boxes


def _output(logits: torch.Tensor, boxes: torch.Tensor, presence: torch.Tensor) -> DetectorOutput:
    return DetectorOutput(
        pred_logits=logits, pred_boxes=boxes, pred_boxes_xyxy=box_cxcywh_to_xyxy(boxes), presence_logit_dec=presence
    )


if __name__ == "__main__":
    sys.exit(main())
