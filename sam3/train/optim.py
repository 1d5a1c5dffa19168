"""Parameter groups (separate LRs for vision / text / the rest, layer-wise decay on the ViT, no weight
decay on norms and biases) and learning-rate schedules as pure functions of the step: SAM3's
inverse-square-root schedule (its released fine-tune: timescale 20, 20 warmup and 20 cooldown steps),
cosine or constant."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
from torch import nn

SCHEDULE_KINDS = ("inverse_sqrt", "cosine", "constant")
_SCHEDULE = "optim.schedule"
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


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The multiplier of every group's base LR at optimizer step s: warmup(s) * decay(s) * cooldown(s).

    With N = total_steps, W = warmup_steps, C = cooldown_steps:
        warmup(s) = start + (1 - start) * min(1, s / W), or 1 if W = 0 (start = warmup_start_factor).
        decay(s) for "inverse_sqrt": 1 / sqrt((s - W + timescale) / timescale) once s > W, else 1;
            for "cosine": min + (1 - min) * (1 + cos(pi * p)) / 2 with p = clip((s - W) / (N - W), 0, 1)
            and min = min_factor; for "constant": 1.
        cooldown(s) = clip((N - s) / C, 0, 1), or 1 if C = 0.

    "inverse_sqrt" with start 0 is Meta's `InverseSquareRootParamScheduler` as its trainer drives it
    (step s, where = s / N): step 0 trains with LR 0, so AdamW only fills its moment estimates, as in SAM3.
    One deviation: Meta infers N from s / where, undefined at step 0, where it takes N = 1; that only changes
    step 0 when W = 0 (Meta's factor is then 1 / C). Here N is always `total_steps`.

    Attributes:
        total_steps: optimizer steps of the run (the config sets it to `trainer.max_steps`).
        kind: one of `SCHEDULE_KINDS`.
        warmup_steps: length of the linear warmup.
        cooldown_steps: length of the final linear ramp to 0 (any kind).
        timescale: steps after warmup at which "inverse_sqrt" has decayed to 1 / sqrt(2).
        warmup_start_factor: multiplier at step 0.
        min_factor: final multiplier of "cosine".
    """

    total_steps: int
    kind: str = "inverse_sqrt"
    warmup_steps: int = 20
    cooldown_steps: int = 20
    timescale: float = 20.0
    warmup_start_factor: float = 0.0
    min_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"{_SCHEDULE}.kind={self.kind!r}: expected one of {', '.join(SCHEDULE_KINDS)}")
        for key in ("total_steps", "warmup_steps", "cooldown_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{_SCHEDULE}.{key}={value!r}: expected an integer >= 0")
        if not self.timescale > 0:
            raise ValueError(f"{_SCHEDULE}.timescale={self.timescale!r}: expected a number of steps > 0")
        for key in ("warmup_start_factor", "min_factor"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{_SCHEDULE}.{key}={value!r}: expected a multiplier in [0, 1]")


def lr_factor(step: int, config: ScheduleConfig) -> float:
    """The LR multiplier at optimizer step `step` (a pure function: resuming needs no scheduler state)."""
    total, warmup, cooldown = config.total_steps, config.warmup_steps, config.cooldown_steps
    factor = 1.0
    if warmup:
        factor *= config.warmup_start_factor + (1.0 - config.warmup_start_factor) * min(1.0, step / warmup)
    if config.kind == "inverse_sqrt" and step > warmup:
        factor /= math.sqrt((step - warmup + config.timescale) / config.timescale)
    elif config.kind == "cosine":
        progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        factor *= config.min_factor + (1.0 - config.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cooldown:
        factor *= min(max((total - step) / cooldown, 0.0), 1.0)
    return factor


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Sets every group's LR to its `initial_lr` times `factor`."""
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


def _section(cls: type, value: Any, where: str):
    """`value` as a `cls` instance: a mapping is checked for unknown and missing keys, then converted."""
    if isinstance(value, cls):
        return value
    valid = [f.name for f in fields(cls) if f.init]
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}={value!r}: expected a mapping with keys {valid}")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    required = [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING]
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    return cls(**value)


def build_schedule_config(**values: Any) -> ScheduleConfig:
    """`ScheduleConfig` from the `optim.schedule` section; unknown keys raise naming the valid ones."""
    return _section(ScheduleConfig, values, _SCHEDULE)
