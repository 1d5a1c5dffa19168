"""Typed config sections: a mapping from YAML becomes a frozen dataclass, or a clear error.

Every typed section of a run config (`trainer`, `eval`, `runtime`, `optim.*`) is built by
`build_section`, so each rejects unknown keys the same way, naming the valid ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar("T")


def build_section(cls: type[T], value: Any, where: str) -> T:
    """`value` as a `cls` instance: a mapping is checked for unknown and missing keys, then converted.

    Args:
        cls: a dataclass.
        value: a `cls` instance (returned as is) or a mapping of its fields.
        where: the section's config path, for messages (e.g. "optim.optimizer").
    """
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
