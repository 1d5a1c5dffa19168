"""AdamW parameter groups built from config rules, and LR schedules as pure functions of the step.

The defaults are SAM3's released fine-tune (Meta's `roboflow_v100_full_ft_100_images.yaml`): base LR 8e-5
for everything outside the backbone, 2.5e-5 for the image encoder and 5e-6 for the text encoder; layer-wise
decay 0.9 inside the ViT trunk with the position embedding kept at scale 1; weight decay 0.1 except on
parameters whose name contains "bias" and parameters of `torch.nn.LayerNorm` modules (so the ViT position
embedding, the text positional embedding and GroupNorm weights are decayed); gradient clipping at 0.1;
the inverse-square-root schedule with timescale 20, 20 warmup and 20 cooldown steps.

Meta expresses the same rules as per-option scheduler lists plus a param-group modifier; here each concern
is one small frozen dataclass (`LrGroup`, `LayerDecay`, `NoWeightDecay`) inside `OptimConfig`. Patterns are
globs matched case-sensitively against full parameter names (`fnmatchcase`, as Meta), or regular expressions
written `re:<regex>` (full match). Every pattern and module type must match something in the model, so a typo
raises instead of silently training with the wrong LR.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sam3.train.sections import build_section

logger = logging.getLogger(__name__)

REST_GROUP = "rest"  # name of the parameters no `lr_groups` entry claims
SCHEDULE_KINDS = ("inverse_sqrt", "cosine", "constant")
_OPTIM = "optim.optimizer"
_SCHEDULE = "optim.schedule"
_STEM_KEYS = ("ln_pre", "pos_embed", "cls_token", "patch_embed")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


@dataclass(frozen=True, kw_only=True)
class LrGroup:
    """Parameters whose full name matches any of `params` train with base LR `lr`.

    Attributes:
        name: label of the group (param-group names and `lr/<name>...` scalars start with it).
        params: glob or `re:<regex>` patterns of full parameter names.
        lr: base LR before layer decay and the schedule.
    """

    name: str
    params: tuple[str, ...]
    lr: float

    def __post_init__(self) -> None:
        where = f"{_OPTIM}.lr_groups.{self.name}"
        if self.name == REST_GROUP:
            raise ValueError(
                f"{_OPTIM}.lr_groups: {REST_GROUP!r} names the parameters no group claims; their LR is "
                f"{_OPTIM}.lr. Rename the group."
            )
        object.__setattr__(self, "params", _patterns(self.params, f"{where}.params"))
        if not self.params:
            raise ValueError(f"{where}.params is empty: give at least one pattern, e.g. ['backbone.vision_backbone.*']")
        _check_non_negative(self.lr, f"{where}.lr")


@dataclass(frozen=True, kw_only=True)
class LayerDecay:
    """BEiT-style layer-wise LR decay inside one ViT, with Meta's layer ids (`ViT.get_layer_id` of SAM3).

    With D blocks, a parameter `<apply_to>.<rest>` gets layer id D + 1 if `rest` contains "rel_pos"; else 0
    if it contains "ln_pre", "pos_embed", "cls_token" or "patch_embed" (the stem); else i + 1 for
    `blocks.{i}.`; else D + 1 (e.g. a final norm). Its LR is multiplied by value ** (D + 1 - layer id): the
    last block by value, the stem by value ** (D + 1), parameters outside `apply_to` by 1. Meta looks for
    these words in the full name and takes D from `len(trunk.blocks)`; we look in the name below `apply_to`
    and count the `blocks.{i}` indices, which agree for our ViT (whose names follow Meta's; it has no
    `rel_pos` tables, `cls_token` or final norm, so ids 0 and 1..D occur).

    Attributes:
        value: decay per layer; 1.0 turns the decay off.
        apply_to: module path of the ViT; D counts the `blocks.{i}` under it.
        overrides: (pattern, scale) pairs, first match wins: a parameter under `apply_to` matching the pattern
            gets that scale instead of the decayed one. Given as a mapping in YAML.
    """

    value: float = 0.9
    apply_to: str = "backbone.vision_backbone.trunk"
    overrides: tuple[tuple[str, float], ...] = (("*pos_embed*", 1.0),)

    def __post_init__(self) -> None:
        where = f"{_OPTIM}.layer_decay"
        if not isinstance(self.value, (int, float)) or not 0.0 < self.value <= 1.0:
            raise ValueError(f"{where}.value={self.value!r}: expected a number in (0, 1]; 1.0 disables the decay")
        if not isinstance(self.apply_to, str) or not self.apply_to:
            raise ValueError(
                f"{where}.apply_to={self.apply_to!r}: expected a module path, e.g. backbone.vision_backbone.trunk"
            )
        pairs = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        overrides = []
        for pair in pairs:
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise ValueError(
                    f"{where}.overrides: {pair!r} is not a (pattern, scale) pair; write {{'*pos_embed*': 1.0}}"
                )
            pattern, scale = pair
            _check_non_negative(scale, f"{where}.overrides[{pattern!r}]")
            overrides.append((_pattern(pattern, f"{where}.overrides"), float(scale)))
        object.__setattr__(self, "overrides", tuple(overrides))


@dataclass(frozen=True, kw_only=True)
class NoWeightDecay:
    """Parameters trained with weight decay 0.

    Attributes:
        names: glob or `re:<regex>` patterns of full parameter names.
        module_types: dotted class paths; parameters held directly by a module of exactly that class get no
            decay. Like Meta's rule this compares `type(module)`, so subclasses are not matched: list them too.
            Our released-size model has no LayerNorm subclass (the neck has no norm, the segmentation head
            uses `nn.GroupNorm`, whose weights are therefore decayed, as in SAM3).
    """

    names: tuple[str, ...] = ("*bias*",)
    module_types: tuple[str, ...] = ("torch.nn.LayerNorm",)

    def __post_init__(self) -> None:
        where = f"{_OPTIM}.no_weight_decay"
        object.__setattr__(self, "names", _patterns(self.names, f"{where}.names"))
        types = self.module_types
        if isinstance(types, str) or not isinstance(types, Sequence):
            raise ValueError(
                f"{where}.module_types={types!r}: expected a list of class paths, e.g. [torch.nn.LayerNorm]"
            )
        for path in types:
            _module_class(path, f"{where}.module_types")
        object.__setattr__(self, "module_types", tuple(types))


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW settings and parameter-group rules of a fine-tune (defaults: SAM3's released fine-tune).

    A trainable parameter's LR is `lr_group.lr * layer scale * schedule factor`; its weight decay is
    `weight_decay`, or 0 if `no_weight_decay` matches it. Mappings are accepted for the sections (as YAML gives
    them) and converted; unknown keys raise.

    Attributes:
        lr: base LR of the parameters no entry of `lr_groups` claims (fusion encoder, decoder, heads).
        lr_groups: base LRs by name patterns; a parameter may match at most one group. In YAML a mapping
            `name: {params: [...], lr: ...}`.
        layer_decay: layer-wise decay inside the ViT, or None for none.
        weight_decay: decoupled AdamW weight decay of every other parameter.
        no_weight_decay: parameters without weight decay.
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip: max global gradient norm (None or <= 0 disables clipping).
    """

    lr: float = 8e-5
    lr_groups: tuple[LrGroup, ...] = field(
        default_factory=lambda: (
            LrGroup(name="vision", params=("backbone.vision_backbone.*",), lr=2.5e-5),
            LrGroup(name="text", params=("backbone.language_backbone.*",), lr=5e-6),
        )
    )
    layer_decay: LayerDecay | None = field(default_factory=LayerDecay)
    weight_decay: float = 0.1
    no_weight_decay: NoWeightDecay = field(default_factory=NoWeightDecay)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 0.1

    def __post_init__(self) -> None:
        _check_non_negative(self.lr, f"{_OPTIM}.lr")
        _check_non_negative(self.weight_decay, f"{_OPTIM}.weight_decay")
        object.__setattr__(self, "lr_groups", _lr_groups(self.lr_groups))
        if self.layer_decay is not None:
            object.__setattr__(
                self, "layer_decay", build_section(LayerDecay, self.layer_decay, f"{_OPTIM}.layer_decay")
            )
        no_decay = build_section(NoWeightDecay, self.no_weight_decay, f"{_OPTIM}.no_weight_decay")
        object.__setattr__(self, "no_weight_decay", no_decay)
        object.__setattr__(self, "betas", tuple(self.betas))


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW parameter groups of the trainable parameters of `model` under the rules of `config`.

    Patterns are checked against every parameter (frozen ones included, so `optim=freeze_vision` leaves the
    vision rules valid); only trainable parameters are returned, each in exactly one group. A DDP `module.`
    prefix is ignored.

    Returns:
        Groups in order of their first parameter, each with `name` (`<lr group>[_layer<id>|_<override>]`,
        suffixed `_no_decay` without weight decay), `params`, `lr` (= `initial_lr`, the LR before the
        schedule) and `weight_decay`.
    """
    named = {name.removeprefix("module."): param for name, param in model.named_parameters()}
    base = _base_lrs(named, config)
    scales = _layer_scales(named, config.layer_decay)
    no_decay = _no_decay_names(model, named, config.no_weight_decay)
    groups: dict[tuple[str, str, bool], dict] = {}
    for name, param in named.items():
        if not param.requires_grad:
            continue
        group_name, lr = base[name]
        tag, scale = scales.get(name, ("", 1.0))
        decays = name not in no_decay
        key = (group_name, tag, decays)
        if key not in groups:
            label = "_".join(part for part in (group_name, tag, "" if decays else "no_decay") if part)
            groups[key] = {
                "name": label,
                "params": [],
                "lr": lr * scale,
                "initial_lr": lr * scale,
                "weight_decay": config.weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(param)
    result = list(groups.values())
    logger.info("%d parameter groups over %d trainable parameters", len(result), sum(len(g["params"]) for g in result))
    return result


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), betas=config.betas, eps=config.eps)


def select_names(patterns: tuple[str, ...], named: dict[str, Any], where: str) -> list[str]:
    """Names of `named` matching any pattern (glob, or `re:<regex>`), in order; raises a ValueError naming
    `where` and the first pattern that matches nothing (also `sam3.train.finetune`'s freeze rules)."""
    selected: dict[str, None] = {}
    for pattern in patterns:
        hits = [name for name in named if _matches(pattern, name)]
        if not hits:
            raise ValueError(
                f"{where}: pattern {pattern!r} matches no parameter of the model (e.g. {_examples(named)}); "
                "fix or remove it"
            )
        selected.update(dict.fromkeys(hits))
    return list(selected)


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


def _base_lrs(named: dict[str, torch.Tensor], config: OptimConfig) -> dict[str, tuple[str, float]]:
    """Parameter name -> (LR group name, base LR); raises on a parameter claimed by two groups."""
    claimed: dict[str, LrGroup] = {}
    for group in config.lr_groups:
        matched = select_names(group.params, named, f"{_OPTIM}.lr_groups.{group.name}.params")
        for name in matched:
            if name in claimed:
                raise ValueError(
                    f"{_OPTIM}.lr_groups: parameter {name!r} matches both {claimed[name].name!r} "
                    f"({list(claimed[name].params)}) and {group.name!r} ({list(group.params)}); "
                    "make the patterns disjoint"
                )
            claimed[name] = group
    rest = (REST_GROUP, config.lr)
    return {name: (claimed[name].name, claimed[name].lr) if name in claimed else rest for name in named}


def _layer_scales(named: dict[str, torch.Tensor], decay: LayerDecay | None) -> dict[str, tuple[str, float]]:
    """Parameter name -> (group tag, LR scale) for the parameters under `decay.apply_to`."""
    if decay is None:
        return {}
    prefix = decay.apply_to + "."
    inside = {name[len(prefix) :]: name for name in named if name.startswith(prefix)}
    if not inside:
        raise ValueError(
            f"{_OPTIM}.layer_decay.apply_to={decay.apply_to!r} holds no parameter of the model; expected a module "
            f"path such as backbone.vision_backbone.trunk, or layer_decay: null for no layer decay"
        )
    block_ids = [int(m.group(1)) for rest in inside if (m := _BLOCK.search(rest))]
    if not block_ids:
        raise ValueError(f"{_OPTIM}.layer_decay.apply_to={decay.apply_to!r} has no `blocks.<i>.` parameters to decay")
    num_layers = max(block_ids) + 1
    for pattern, _ in decay.overrides:
        if not any(_matches(pattern, name) for name in inside.values()):
            raise ValueError(
                f"{_OPTIM}.layer_decay.overrides: pattern {pattern!r} matches no parameter under "
                f"{decay.apply_to!r} (e.g. {_examples(inside.values())}); fix or remove it"
            )
    scales = {}
    for rest, name in inside.items():
        override = next(((p, s) for p, s in decay.overrides if _matches(p, name)), None)
        if override is not None:
            scales[name] = (_tag(override[0]), override[1])
            continue
        layer_id = _vit_layer_id(rest, num_layers)
        scales[name] = (f"layer{layer_id}", decay.value ** (num_layers + 1 - layer_id))
    return scales


def _vit_layer_id(rest: str, num_layers: int) -> int:
    """Meta's (BEiT's) ViT layer id of the parameter `rest` (its name relative to the ViT)."""
    if "rel_pos" in rest:
        return num_layers + 1
    if any(key in rest for key in _STEM_KEYS):
        return 0
    if match := _BLOCK.search(rest):
        return int(match.group(1)) + 1
    return num_layers + 1


def _no_decay_names(model: nn.Module, named: dict[str, torch.Tensor], rule: NoWeightDecay) -> set[str]:
    where = f"{_OPTIM}.no_weight_decay"
    names = set(select_names(rule.names, named, f"{where}.names"))
    owned_by: dict[type, set[str]] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name, _ in module.named_parameters(recurse=False):
            owned_by.setdefault(type(module), set()).add((prefix + param_name).removeprefix("module."))
    for path in rule.module_types:
        owned = owned_by.get(_module_class(path, f"{where}.module_types"), set())
        if not owned:
            present = sorted({f"{cls.__module__}.{cls.__qualname__}" for cls in owned_by if "Norm" in cls.__name__})
            raise ValueError(
                f"{where}.module_types: no parameter of the model is held by a module of exactly class {path!r} "
                f"(subclasses do not count); norm classes holding parameters: {present}"
            )
        names |= owned
    return names


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _pattern(pattern: Any, where: str) -> str:
    if not isinstance(pattern, str) or not pattern.removeprefix("re:"):
        raise ValueError(f"{where}: pattern {pattern!r} must be a non-empty glob such as 'backbone.*' or 're:<regex>'")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as error:
            raise ValueError(f"{where}: {pattern!r} is not a valid regular expression ({error})") from None
    return pattern


def _patterns(patterns: Any, where: str) -> tuple[str, ...]:
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError(f"{where}={patterns!r}: expected a list of patterns, e.g. ['*bias*']")
    return tuple(_pattern(p, where) for p in patterns)


def _module_class(path: Any, where: str) -> type:
    module_path, _, class_name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_path), class_name) if module_path else None
    except (ImportError, AttributeError):
        cls = None
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(
            f"{where}: {path!r} is not an importable nn.Module class; write its full path, e.g. torch.nn.LayerNorm"
        )
    return cls


def _tag(pattern: str) -> str:
    """A group-name tag for an override pattern: '*pos_embed*' -> 'pos_embed'."""
    return re.sub(r"\W+", "_", pattern.removeprefix("re:")).strip("_") or "override"


def _examples(names) -> str:
    names = list(names)
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _check_non_negative(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where}={value!r}: expected a number >= 0")


def _lr_groups(value: Any) -> tuple[LrGroup, ...]:
    """`LrGroup`s from a mapping `name -> {params, lr}` (YAML) or a sequence of groups."""
    where = f"{_OPTIM}.lr_groups"
    if isinstance(value, Mapping):
        value = [
            build_section(LrGroup, {"name": name, **spec} if isinstance(spec, Mapping) else spec, f"{where}.{name}")
            for name, spec in value.items()
        ]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{where}={value!r}: expected a mapping name -> {{params: [...], lr: ...}}")
    groups = tuple(build_section(LrGroup, group, where) for group in value)
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate group names in {names}")
    return groups


def build_optim_config(**values: Any) -> OptimConfig:
    """`OptimConfig` from the `optim.optimizer` section; unknown keys raise naming the valid ones."""
    return build_section(OptimConfig, values, _OPTIM)


def build_schedule_config(**values: Any) -> ScheduleConfig:
    """`ScheduleConfig` from the `optim.schedule` section; unknown keys raise naming the valid ones."""
    return build_section(ScheduleConfig, values, _SCHEDULE)
