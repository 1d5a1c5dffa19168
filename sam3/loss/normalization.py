"""The normalisers of the set loss (DESIGN.md "Loss normalisation"), counted from targets alone.

SAM3's released fine-tuning objective divides each term by its own count: box and mask terms by N,
the visible target boxes; the classification term by the number of (pair, query) entries G * Q (with
`weak_loss`, by the entries it keeps); the presence term by G, the (frame, prompt) pairs. We take the
same counts over a whole optimizer step (every rank, every accumulation micro-batch), so that the
objective does not depend on how the step's frames are split. All counts are known from the targets
before any forward; `sam3.distributed.reduce` sums them over the world in one all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields

import torch

from sam3.structures import PairTargets

__all__ = ["LossCounts", "LossNormalization"]


@dataclass(frozen=True)
class LossCounts:
    """Counts over a set of (frame, prompt) pairs.

    Attributes:
        num_boxes: visible target boxes (N).
        num_pairs: (frame, prompt) pairs (G), with or without targets.
        num_exhaustive_pairs: pairs whose prompt is exhaustively annotated.
        num_nonexhaustive_boxes: visible target boxes of the other pairs (the entries `weak_loss`
            keeps there: one per matched query).
    """

    num_boxes: int = 0
    num_pairs: int = 0
    num_exhaustive_pairs: int = 0
    num_nonexhaustive_boxes: int = 0

    @staticmethod
    def of(targets: PairTargets) -> LossCounts:
        """The counts of one batch's targets (one host read of two small vectors)."""
        num_boxes = targets.num_boxes.cpu()
        exhaustive = targets.is_exhaustive.cpu()
        return LossCounts(
            num_boxes=int(num_boxes.sum()),
            num_pairs=int(num_boxes.numel()),
            num_exhaustive_pairs=int(exhaustive.sum()),
            num_nonexhaustive_boxes=int(num_boxes[~exhaustive].sum()),
        )

    @staticmethod
    def total(counts: Iterable[LossCounts]) -> LossCounts:
        """Field-wise sum."""
        summed = [sum(column) for column in zip(*(astuple(c) for c in counts), strict=True)]
        return LossCounts(*summed) if summed else LossCounts()

    def as_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(4,) float64 in field order, for an all-reduce."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @staticmethod
    def from_tensor(values: torch.Tensor) -> LossCounts:
        """Inverse of `as_tensor`."""
        return LossCounts(*(int(round(v)) for v in values.tolist()))


@dataclass(frozen=True)
class LossNormalization:
    """What the criterion needs to normalise a rank's share of the step loss.

    Attributes:
        counts: the step's counts over every rank and micro-batch.
        scale: W, the number of ranks whose gradients DDP averages; a rank's share is multiplied by
            it so that the average equals the gradient of the whole step's objective.
    """

    counts: LossCounts
    scale: float = 1.0

    @staticmethod
    def local(targets: PairTargets | Iterable[PairTargets]) -> LossNormalization:
        """The normalisation of a single process that holds the whole step (W = 1)."""
        batches = [targets] if isinstance(targets, PairTargets) else list(targets)
        return LossNormalization(LossCounts.total(LossCounts.of(t) for t in batches))

    @property
    def box_norm(self) -> float:
        """W / N, the factor of summed box and mask terms (N clamped to >= 1)."""
        return self.scale / max(self.counts.num_boxes, 1)

    @property
    def pair_norm(self) -> float:
        """W / G, the factor of the summed presence term (G clamped to >= 1)."""
        return self.scale / max(self.counts.num_pairs, 1)

    def entry_norm(self, num_queries: int, weak_loss: bool) -> float:
        """The factor of the summed classification term of a head with `num_queries` queries.

        Without `weak_loss`, W / (G * Q): every (pair, query) entry counts. With it, the unmatched
        queries of non-exhaustive pairs are dropped from the denominator as from the sum: W / (Q *
        exhaustive pairs + visible boxes of the other pairs), one kept entry per one-to-one match.
        """
        if weak_loss:
            kept = num_queries * self.counts.num_exhaustive_pairs + self.counts.num_nonexhaustive_boxes
        else:
            kept = num_queries * self.counts.num_pairs
        return self.scale / max(kept, 1)

    def describe(self) -> dict[str, float]:
        """The counts and the scale, for logging."""
        return {f.name: float(getattr(self.counts, f.name)) for f in fields(self.counts)} | {"scale": self.scale}
