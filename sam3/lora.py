"""LoRA adapters (Hu et al. 2021) on a built SAM3 model, through Hugging Face `peft` used as a library.

A targeted `nn.Linear` computing y = W x + b becomes peft's `lora.Linear`, computing
y = W x + b + (alpha / rank) * B A dropout(x) with A (rank, in) and B (out, rank); B starts at zero, so an
injected model computes what the base model did. Its parameters are renamed: `<module>.weight` becomes
`<module>.base_layer.weight`, and `<module>.lora_A.default.weight` / `<module>.lora_B.default.weight`
are added. `merge_lora` folds W + (alpha / rank) B A back into plain `nn.Linear`s, so a merged model has
exactly the released key layout; `merge_lora_state_dict` does the same to a saved state dict (how
`sam3.checkpoint` reads a LoRA training checkpoint as plain weights).

Only plain `nn.Linear` modules can be targets. The fusion encoder and decoder attend with
`nn.MultiheadAttention`, whose forward reads `in_proj_weight` and `out_proj.weight` directly (an adapter on
`out_proj` would never run); peft's own adapter for the whole attention module merges the delta before every
forward and subtracts it after, so the frozen weight drifts by rounding at every step and the parameters are
re-registered on each call (exact resume and DDP need stable parameters). There the feed-forward layers
(`linear1`, `linear2`) are the targets.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"  # peft's adapter name: it appears in the parameter names (`lora_A.default.weight`)


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """Which layers get adapters and how large they are (the `lora:` section of a run config).

    Attributes:
        rank: r, the inner dimension of B A.
        alpha: the update is scaled by alpha / rank.
        dropout: dropout on the adapter's input (training only).
        targets: globs (or `re:<regex>`, full match) of module names, e.g.
            `backbone.vision_backbone.trunk.blocks.*.attn.qkv`; each must match at least one module, and every
            match must be a plain `nn.Linear`.
        trainable: globs of parameter names kept trainable besides the adapters (e.g. small heads); each must
            match at least one parameter.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank={self.rank!r}: expected an integer >= 1")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha!r}: expected a number > 0 (the update is scaled by alpha/rank)")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r}: expected a probability in [0, 1)")
        for key in ("targets", "trainable"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
                raise ValueError(f"lora.{key}={value!r}: expected a list of non-empty name patterns")
            object.__setattr__(self, key, tuple(value))
        if not self.targets:
            raise ValueError("lora.targets is empty: name the nn.Linear modules to adapt, e.g. ['*.attn.qkv']")


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Injects adapters into the modules `spec.targets` names and leaves only the adapters and the
    `spec.trainable` parameters trainable (every other parameter gets `requires_grad=False`).

    Returns:
        `model`, changed in place.

    Raises:
        ValueError: a pattern matches nothing, or a target is not a plain `nn.Linear` (named, with the reason).
    """
    from peft import LoraConfig, inject_adapter_in_model

    modules = dict(model.named_modules())
    targets: dict[str, None] = {}
    for pattern in spec.targets:
        hits = [name for name in modules if name and _matches(pattern, name)]
        if not hits:
            linears = [n for n, m in modules.items() if type(m) is nn.Linear]
            raise ValueError(
                f"lora.targets: pattern {pattern!r} matches no module of the model (nn.Linear modules are e.g. "
                f"{_examples(linears)}); fix or remove it"
            )
        targets.update(dict.fromkeys(hits))
    for name in targets:
        _check_target(name, modules[name])
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(targets),
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    named = dict(model.named_parameters())
    for param in named.values():
        param.requires_grad_(False)
    for name, param in named.items():
        if ".lora_" in name:
            param.requires_grad_(True)
    for pattern in spec.trainable:
        hits = [name for name in named if _matches(pattern, name)]
        if not hits:
            raise ValueError(
                f"lora.trainable: pattern {pattern!r} matches no parameter of the model (e.g. {_examples(named)}); "
                "fix or remove it"
            )
        for name in hits:
            named[name].requires_grad_(True)
    num_adapter = sum(p.numel() for n, p in named.items() if ".lora_" in n)
    logger.info(
        "LoRA rank %d alpha %g on %d linear layers: %d adapter parameters",
        spec.rank,
        spec.alpha,
        len(targets),
        num_adapter,
    )
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Folds every adapter into its base layer (W <- W + (alpha / rank) B A) and puts the plain layer back in
    place of peft's wrapper, so the state dict has the base model's keys. A model without adapters is
    returned unchanged.

    Returns:
        `model`, changed in place.
    """
    wrapped = [(name, module) for name, module in model.named_modules() if _is_adapter_layer(module)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    if wrapped:
        logger.info("merged %d LoRA layers into their base weights", len(wrapped))
    return model


def merge_lora_state_dict(state_dict: Mapping[str, torch.Tensor], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The state dict of a model with adapters as the plain model's: for every adapted layer,
    `<m>.weight = <m>.base_layer.weight + (B @ A) * alpha / rank` (peft's merge arithmetic, so this equals
    `merge_lora` on the built model) and `<m>.bias = <m>.base_layer.bias`; no peft needed.

    Raises:
        ValueError: an adapter whose base weight or other half is missing.
    """
    suffix_a, suffix_b = f".lora_A.{ADAPTER_NAME}.weight", f".lora_B.{ADAPTER_NAME}.weight"
    scale = spec.alpha / spec.rank
    merged = {}
    for key, value in state_dict.items():
        if ".lora_" in key:
            if not key.endswith((suffix_a, suffix_b)):
                raise ValueError(f"{key!r}: not an adapter tensor of a LoRA model ({suffix_a!r} / {suffix_b!r})")
            continue
        merged[key.replace(".base_layer.", ".")] = value
    for key in state_dict:
        if not key.endswith(suffix_a):
            continue
        layer = key.removesuffix(suffix_a)
        needed = (f"{layer}{suffix_b}", f"{layer}.base_layer.weight")
        missing = [k for k in needed if k not in state_dict]
        if missing:
            raise ValueError(f"LoRA layer {layer!r} cannot be merged: {missing} missing from the state dict")
        delta = (state_dict[needed[0]] @ state_dict[key]) * scale
        merged[f"{layer}.weight"] = state_dict[needed[1]] + delta.to(state_dict[needed[1]].dtype)
    return merged


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of `model` (for a LoRA model: adapters and `lora.trainable`), detached
    copies on CPU: what a LoRA fine-tune changed, a small file next to the base checkpoint."""
    return {
        name.removeprefix("module."): param.detach().cpu().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_adapters(model: nn.Module, adapters: Mapping[str, torch.Tensor]) -> None:
    """Copies `adapters` (from `trainable_state_dict`) into a model built with the same `LoraSpec`.

    Raises:
        ValueError: a key the model does not have, or of another shape.
    """
    own = model.state_dict()
    unknown = [k for k in adapters if k not in own]
    if unknown:
        raise ValueError(
            f"{len(unknown)} adapter tensors are not in the model: {_examples(unknown)}; build the model with the "
            "lora config the adapters were trained with (it is stored beside them)"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in adapters.items() if v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"adapter tensors differ in shape from the model (another lora.rank?): {_examples(wrong)}")
    with torch.no_grad():
        for key, value in adapters.items():
            own[key].copy_(value)


def lora_spec(values: Mapping[str, Any] | LoraSpec) -> LoraSpec:
    """A `LoraSpec` from a mapping (the config section, or as stored in checkpoints); unknown keys raise."""
    if isinstance(values, LoraSpec):
        return values
    valid = [f.name for f in fields(LoraSpec)]
    if not isinstance(values, Mapping):
        raise ValueError(f"lora={values!r}: expected a mapping with keys {valid}")
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"lora: unknown key(s) {unknown}; valid keys: {valid}")
    return LoraSpec(**values)


def _check_target(name: str, module: nn.Module) -> None:
    if type(module) is nn.Linear:
        return
    if isinstance(module, nn.MultiheadAttention):
        reason = (
            "an nn.MultiheadAttention: peft's adapter for it merges the update before every forward and "
            "subtracts it after, so the frozen weight drifts by rounding and exact resume breaks; target the "
            "feed-forward linear1 / linear2 of the layer instead"
        )
    elif isinstance(module, nn.Linear):
        reason = (
            f"a {type(module).__name__} (the out_proj of an nn.MultiheadAttention, whose forward reads the weight "
            "directly: an adapter there would never run)"
        )
    else:
        reason = f"a {type(module).__name__}; only plain nn.Linear layers take adapters here"
    raise ValueError(f"lora.targets: module {name!r} is {reason}")


def _is_adapter_layer(module: nn.Module) -> bool:
    if "peft" not in sys.modules:  # no adapter can exist (and importing peft takes seconds)
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _examples(names) -> str:
    names = list(names)
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
