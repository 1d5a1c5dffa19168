"""What a run trains, applied to the built model by `sam3.train.entry.build_model` (so the trainer and every
tool that builds a run's model see the same trainable set).

In order: LoRA adapters (`lora:`, `sam3.lora.apply_lora`: every base weight frozen, adapters and
`lora.trainable` train); then the freeze rules of the `optim` group, `optim.freeze` (parameters to freeze)
and `optim.train_only` (freeze every parameter that matches none of these); then `trainer.frozen_params`
(the interactive heads, kept as loaded). Each step can only freeze more. Patterns of `optim.freeze`,
`optim.train_only` and `lora.*` must each match a parameter (or module), so a typo raises naming it;
`trainer.frozen_params` may match nothing (a model built with `tracker=null`).

Frozen parameters (`requires_grad=False`) get no optimizer state (`sam3.train.optim.param_groups` skips
them) and, since freezing happens before DDP wraps the model, DDP leaves them out of its gradient buckets:
they are never all-reduced. Frozen parts still run in train mode: the model has no BatchNorm (LayerNorm and
GroupNorm hold no running statistics), and dropout / drop-path inside a frozen encoder act as in a full
fine-tune.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from torch import nn

from sam3.lora import LoraSpec, apply_lora
from sam3.train.optim import select_names

logger = logging.getLogger(__name__)

OPTIM_KEYS = ("optimizer", "schedule", "freeze", "train_only")  # the keys of the `optim` config group


@dataclass(frozen=True, kw_only=True)
class FreezeRules:
    """Parameters a run keeps frozen.

    Attributes:
        freeze: globs (or `re:<regex>`) of parameter names to freeze (`optim.freeze`); each must match.
        train_only: if not empty, every parameter matching none of these is frozen (`optim.train_only`); each
            must match.
        keep_frozen: globs frozen where they match (`trainer.frozen_params`); may match nothing.
    """

    freeze: tuple[str, ...] = ()
    train_only: tuple[str, ...] = ()
    keep_frozen: tuple[str, ...] = ()


def apply_finetune(model: nn.Module, *, rules: FreezeRules, lora: LoraSpec | None = None) -> nn.Module:
    """Injects LoRA adapters (if `lora`), then freezes by `rules`; logs the trainable / frozen counts.

    Returns:
        `model`, changed in place.

    Raises:
        ValueError: a pattern of `optim.freeze`, `optim.train_only` or `lora` that matches nothing, named.
    """
    if lora is not None:
        apply_lora(model, lora)
    named = dict(model.named_parameters())
    frozen = set(select_names(tuple(rules.freeze), named, "optim.freeze"))
    if rules.train_only:
        kept = set(select_names(tuple(rules.train_only), named, "optim.train_only"))
        frozen |= set(named) - kept
    frozen |= {name for name in named if any(fnmatch.fnmatchcase(name, p) for p in rules.keep_frozen)}
    for name in frozen:
        named[name].requires_grad_(False)
    num_trainable = sum(p.numel() for p in named.values() if p.requires_grad)
    num_total = sum(p.numel() for p in named.values())
    logger.info(
        "%d of %d parameters train (%.2f %%), %d frozen",
        num_trainable,
        num_total,
        100.0 * num_trainable / max(num_total, 1),
        num_total - num_trainable,
    )
    return model
