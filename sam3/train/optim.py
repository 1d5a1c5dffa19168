"""Parameter groups (separate LRs for vision / text / the rest, layer-wise decay on the ViT, no weight
decay on norms and biases) and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

VISION_PREFIX = "backbone.vision_backbone."
TEXT_PREFIX = "backbone.language_backbone."
_VIT_BLOCK = re.compile(r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.")
_VIT_STEM = re.compile(r"^backbone\.vision_backbone\.trunk\.(patch_embed|pos_embed|cls_token|ln_pre)")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings of a fine-tune.

    Attributes:
        lr_vision: base LR of the image encoder (the neck gets it; ViT blocks decay from there).
        lr_text: LR of the text encoder.
        lr_rest: LR of everything else (fusion encoder, decoder, heads).
        weight_decay: applied to weight matrices only, never to norms, biases or 1-D parameters.
        layer_decay: ViT block i of D gets lr_vision * layer_decay ** (D - i); the stem ** (D + 1).
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip: max global gradient norm (None or <= 0 disables clipping).
    """

    lr_vision: float = 2.5e-5
    lr_text: float = 5e-6
    lr_rest: float = 8e-5
    weight_decay: float = 0.1
    layer_decay: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 0.1


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW parameter groups of the trainable parameters of `model`, each with a `name` and `lr`.

    Parameter names follow the SAM3 layout (`backbone.vision_backbone.trunk.blocks.{i}.`, ...); a
    DDP `module.` prefix is ignored.
    """
    named = [(name.removeprefix("module."), p) for name, p in model.named_parameters() if p.requires_grad]
    block_ids = [int(m.group(1)) for name, _ in named if (m := _VIT_BLOCK.match(name))]
    depth = max(block_ids) + 1 if block_ids else 0
    groups: dict[tuple[str, float, bool], dict] = {}
    for name, param in named:
        component, lr = _component_and_lr(name, depth, config)
        decay = param.ndim >= 2 and not name.endswith(("pos_embed", "cls_token", "positional_embedding"))
        key = (component, lr, decay)
        if key not in groups:
            groups[key] = {
                "name": f"{component}{'' if decay else '_no_decay'}",
                "params": [],
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": config.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), betas=config.betas, eps=config.eps)


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup then cosine (or constant) decay, as a multiplier of every group's base LR.

    Attributes:
        warmup_steps: steps of linear warmup from `warmup_start_factor`.
        total_steps: steps at which the decay reaches `min_factor`.
        kind: "cosine" or "constant" after warmup.
        warmup_start_factor: multiplier at step 0.
        min_factor: final multiplier of the cosine decay.
    """

    warmup_steps: int = 0
    total_steps: int = 1
    kind: str = "cosine"
    warmup_start_factor: float = 0.01
    min_factor: float = 0.01


def lr_factor(step: int, config: ScheduleConfig) -> float:
    """The LR multiplier at optimizer step `step` (a pure function: resuming needs no scheduler state)."""
    if step < config.warmup_steps:
        progress = step / max(config.warmup_steps, 1)
        return config.warmup_start_factor + (1.0 - config.warmup_start_factor) * progress
    if config.kind == "constant":
        return 1.0
    if config.kind != "cosine":
        raise ValueError(f"unknown schedule kind {config.kind!r}; expected 'cosine' or 'constant'")
    decay_steps = max(config.total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / decay_steps, 1.0)
    return config.min_factor + (1.0 - config.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: torch.optim.Optimizer, step: int, schedule: Callable[[int], float]) -> None:
    """Sets every group's LR to its `initial_lr` times `schedule(step)`."""
    factor = schedule(step)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def _component_and_lr(name: str, depth: int, config: OptimConfig) -> tuple[str, float]:
    if name.startswith(TEXT_PREFIX):
        return "text", config.lr_text
    if not name.startswith(VISION_PREFIX):
        return "rest", config.lr_rest
    if match := _VIT_BLOCK.match(name):
        layer = int(match.group(1)) + 1
        return f"vision_layer{layer}", config.lr_vision * config.layer_decay ** (depth + 1 - layer)
    if _VIT_STEM.match(name):
        return "vision_layer0", config.lr_vision * config.layer_decay ** (depth + 1)
    return "vision", config.lr_vision
