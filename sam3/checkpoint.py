"""The one weights loader: Meta's released SAM3 checkpoint, bare and DDP state dicts, and our own
training checkpoints, into a model whose names follow the released image model.

Layouts recognised (from the file's keys, after `torch.load(weights_only=True)`):
- official: `{"model": {"detector.<image-model key>": ..., "tracker.<key>": ...}}`. `detector.` is
  stripped. `tracker.*` and `detector.backbone.vision_backbone.sam2_convs.*` (the tracker and its
  neck) are optional: loaded into the model's `tracker` and `backbone.vision_backbone.sam2_convs` where
  it has them (all 309 tracker keys: interactive heads and memory), reported as unused where it does
  not (a model built with `tracker=null`). The same two parts are optional in every layout.
- training: `{"model": state_dict, "model_config": {...}, ...}` as written by our trainer; the resolved
  model config (`read_model_config`) lets tools rebuild the architecture; other entries are ignored.
- bare: a state dict; ddp: a state dict whose keys all start with `module.`.

Every other missing, unexpected or mis-shaped key raises (`strict=False` downgrades that to a
warning). RoPE tables (`*.freqs_cis`) are derived, not learned: the file's tables are checked against
the ones the model recomputes for the same token grid and are never copied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sam3.lora import lora_spec, merge_lora_state_dict

logger = logging.getLogger(__name__)

OFFICIAL_MODEL_PREFIX = "detector."
# Model keys of the optional tracker parts (tracker, second pyramid), in any layout.
OPTIONAL_MODEL_PREFIXES = ("tracker.", "backbone.vision_backbone.sam2_convs.")
DDP_PREFIX = "module."
MODEL_CONFIG_KEY = "model_config"  # a training checkpoint's resolved `model` config section
LORA_CONFIG_KEY = "lora_config"  # a LoRA run's `lora` section (`sam3.lora.LoraSpec` fields)
ROPE_SUFFIX = "freqs_cis"
ROPE_ATOL = 1e-4
_MAX_LISTED = 10


@dataclass(frozen=True)
class KeyMapping:
    """How the keys of a checkpoint map onto model keys.

    Attributes:
        layout: "official", "ddp" or "bare".
        renamed: file key -> model key, for every key the model must have.
        optional: file key -> model key, for keys of optional parts (tracker, second pyramid): loaded
            when the model has the key, else reported as known unused.
    """

    layout: str
    renamed: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What a load did. Lists hold model-side key names unless stated otherwise."""

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    known_unused: list[str] = field(default_factory=list)  # file-side names
    outside_prefix: list[str] = field(default_factory=list)  # model keys not under the requested prefix
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file shape vs model shape"
    rope_checked: list[str] = field(default_factory=list)
    rope_mismatched: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        parts = []
        for name, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.mismatched),
            ("RoPE table differs from recomputed", self.rope_mismatched),
        ):
            if items:
                shown = ", ".join(items[:_MAX_LISTED]) + (" ..." if len(items) > _MAX_LISTED else "")
                parts.append(f"{len(items)} {name}: {shown}")
        return parts


def map_checkpoint_keys(keys: Iterable[str]) -> KeyMapping:
    """Recognise the layout of a flat state dict's keys and map them to model keys."""
    keys = list(keys)
    if any(k.startswith(OFFICIAL_MODEL_PREFIX) for k in keys):
        layout, strip = "official", OFFICIAL_MODEL_PREFIX  # a key outside `detector.` is unexpected unless optional
    elif keys and all(k.startswith(DDP_PREFIX) for k in keys):
        layout, strip = "ddp", DDP_PREFIX
    else:
        layout, strip = "bare", ""
    renamed, optional = {}, {}
    for key in keys:
        model_key = key.removeprefix(strip)
        (optional if model_key.startswith(OPTIONAL_MODEL_PREFIXES) else renamed)[key] = model_key
    return KeyMapping(layout, renamed, optional)


def read_model_config(path: str | Path) -> dict | None:
    """The resolved `model` config a training checkpoint was written with; None for other layouts."""
    obj = _load(path)
    return obj.get(MODEL_CONFIG_KEY) if isinstance(obj, Mapping) else None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Load a checkpoint file's flat state dict with `weights_only=True`.

    A LoRA training checkpoint (it carries `lora_config`) is returned with its adapters merged
    (`sam3.lora.merge_lora_state_dict`): the plain model's keys, as any loader of a fine-tune expects.

    Returns:
        the state dict and whether it was wrapped under `model` (official and training layouts).
    """
    obj = _load(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    wrapped = isinstance(obj.get("model"), Mapping)
    state_dict = dict(obj["model"]) if wrapped else dict(obj)
    if wrapped and isinstance(obj.get(LORA_CONFIG_KEY), Mapping):
        state_dict = merge_lora_state_dict(state_dict, lora_spec(obj[LORA_CONFIG_KEY]))
        logger.info("%s: a LoRA training checkpoint, read with its adapters merged into the base weights", path)
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        where = f"{path}['model']" if wrapped else str(path)
        raise ValueError(
            f"{where} is not a state dict: entries {not_tensors[:_MAX_LISTED]} are not tensors "
            "(expected a state dict, or a dict with the state dict under 'model')"
        )
    return state_dict, wrapped


def load_sam3_weights(model: nn.Module, path: str | Path, *, prefix: str = "", strict: bool = True) -> LoadReport:
    """Load a checkpoint file into a model (see the module docstring for the layouts).

    Args:
        model: the module to fill.
        path: checkpoint file.
        prefix: load only the file's keys under this prefix (after layout mapping), stripped, e.g.
            "backbone." to fill a `VLBackbone` from a full-model checkpoint.
        strict: raise on missing, unexpected or mis-shaped keys and wrong RoPE tables; False logs a
            warning and loads what matches.
    """
    state_dict, wrapped = read_state_dict(path)
    return load_state_dict(model, state_dict, prefix=prefix, strict=strict, source=str(path), wrapped=wrapped)


def load_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefix: str = "",
    strict: bool = True,
    source: str = "<state dict>",
    wrapped: bool = False,
) -> LoadReport:
    """Load an in-memory state dict of any recognised layout; see `load_sam3_weights`."""
    mapping = map_checkpoint_keys(state_dict)
    layout = "training" if wrapped and mapping.layout == "bare" else mapping.layout
    report = LoadReport(source=source, layout=layout)
    own = model.state_dict()
    incoming = {}
    for file_key, model_key in mapping.optional.items():
        if model_key.startswith(prefix) and model_key[len(prefix) :] in own:
            incoming[model_key[len(prefix) :]] = state_dict[file_key]
        else:
            report.known_unused.append(file_key)
    for file_key, model_key in mapping.renamed.items():
        if prefix:
            if not model_key.startswith(prefix):
                report.outside_prefix.append(model_key)
                continue
            model_key = model_key[len(prefix) :]
        incoming[model_key] = state_dict[file_key]

    to_load = {}
    for key, tensor in incoming.items():
        if key.endswith(ROPE_SUFFIX) and key in own:
            _check_rope(model, key, tensor, report)
        elif key not in own:
            report.unexpected.append(key)
        elif tensor.shape != own[key].shape:
            report.mismatched.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = tensor
    # RoPE tables are recomputed by the model; a file without them is complete.
    report.missing = [k for k in own if k not in incoming and not k.endswith(ROPE_SUFFIX)]

    if report.problems:
        message = f"checkpoint {source} ({layout} layout) does not fit {type(model).__name__}: " + "; ".join(
            report.problems
        )
        if strict:
            raise ValueError(message + " (pass strict=False to load the matching keys anyway)")
        logger.warning(message)

    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, f"keys vetted against state_dict() were rejected: {result.unexpected_keys}"
    report.loaded = sorted(to_load)
    logger.info(
        "loaded %d tensors from %s (%s layout); %d recognised keys unused by this model%s; %d RoPE tables checked",
        len(report.loaded),
        source,
        layout,
        len(report.known_unused),
        _unused_summary(report.known_unused),
        len(report.rope_checked),
    )
    return report


def _load(path: str | Path) -> object:
    """`torch.load` with `weights_only=True`, memory-mapped when the file format allows it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def _check_rope(model: nn.Module, key: str, table: torch.Tensor, report: LoadReport) -> None:
    """Compare a file's RoPE table with the one the owning attention module computes."""
    owner = model.get_submodule(key[: -len(ROPE_SUFFIX) - 1])
    if not table.is_complex() or table.ndim != 2 or not hasattr(owner, "rope_table_for_tokens"):
        report.rope_mismatched.append(f"{key}: file {table.dtype} {tuple(table.shape)} is not a RoPE table")
        return
    try:
        expected = owner.rope_table_for_tokens(table.shape[0]).to("cpu")
    except ValueError as err:
        report.rope_mismatched.append(f"{key}: {err}")
        return
    if expected.shape != table.shape or not torch.allclose(table.to(expected.dtype), expected, atol=ROPE_ATOL, rtol=0):
        report.rope_mismatched.append(key)
    else:
        report.rope_checked.append(key)


def _unused_summary(keys: list[str]) -> str:
    """' (160 tracker.*)' style summary."""
    if not keys:
        return ""
    model_keys = [k.removeprefix(OFFICIAL_MODEL_PREFIX).removeprefix(DDP_PREFIX) for k in keys]
    counts = {p: sum(k.startswith(p) for k in model_keys) for p in OPTIONAL_MODEL_PREFIXES}
    return " (" + ", ".join(f"{n} {p}*" for p, n in counts.items() if n) + ")"
