"""Training losses: query-to-target matching and the set criterion over (frame, prompt) pairs."""

from sam3.loss.criterion import ClassificationLoss, LossWeights, MaskLoss, SetCriterion, build_criterion
from sam3.loss.matcher import HungarianMatcher, Matches, OneToManyMatcher

__all__ = [
    "ClassificationLoss",
    "HungarianMatcher",
    "LossWeights",
    "MaskLoss",
    "Matches",
    "OneToManyMatcher",
    "SetCriterion",
    "build_criterion",
]
