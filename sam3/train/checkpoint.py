"""Training checkpoints: save on rank 0 atomically, keep the last K, resume on every rank.

A checkpoint holds everything needed to continue bit-exactly: model, optimizer, scaler, step, epoch,
sampler position and the RNG states of every rank (the LR schedule is a pure function of the step),
plus the resolved model config (`model_config`), so tools rebuild the architecture the weights fit.
Files are `RUN_DIR/checkpoints/step_XXXXXXXX.pt`, written to a temporary name and renamed, so a crash
mid-write never leaves a truncated checkpoint that resume would pick up. Loading uses
`weights_only=True`, so every value stored here is a tensor, number, string or container of those.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam3.distributed.collectives import all_gather_objects, barrier
from sam3.distributed.env import get_rank

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path | None:
    """Writes `state` plus every rank's RNG states; collective (all ranks call it), rank 0 writes.

    Returns the path on rank 0 and None elsewhere. Keeps the newest `keep_last` checkpoints (0 keeps all).
    """
    rng_states = all_gather_objects(_rng_state(), op="all-gather of RNG states")
    path = checkpoint_path(run_dir, step)
    if get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({**state, "step": step, "rng_states": rng_states}, tmp)
        os.replace(tmp, path)
        logger.info("saved checkpoint %s", path)
        if keep_last > 0:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                old.unlink()
    barrier(op="barrier after the write")
    return path if get_rank() == 0 else None


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a training checkpoint with `weights_only=True`; a clear error if it is not one of ours."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read training checkpoint {path}: {error}") from error
    for key in ("model", "step"):
        if key not in state:
            raise ValueError(f"{path} is not a sam3 training checkpoint: it has no {key!r} entry")
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    """Restores this rank's RNG states saved by `save_checkpoint` (same world size required)."""
    states = state.get("rng_states")
    rank = get_rank()
    if not states or rank >= len(states):
        raise ValueError(
            f"the checkpoint holds RNG states for {len(states) if states else 0} ranks; this run has rank {rank}. "
            "Exact resume needs the world size of the run that wrote it."
        )
    mine = states[rank]
    torch.set_rng_state(mine["torch"])
    if torch.cuda.is_available() and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"])
    random.setstate((mine["python"][0], tuple(mine["python"][1]), mine["python"][2]))
    np.random.set_state(("MT19937", mine["numpy_keys"].numpy().astype(np.uint32), *mine["numpy_rest"]))


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state
