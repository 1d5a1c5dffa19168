"""Training checkpoints: save on rank 0 atomically, keep the last K, verify, resume on every rank.

A checkpoint holds everything needed to continue bit-exactly: model, optimizer, scaler, step, epoch,
sampler position and the RNG states of every rank (the LR schedule is a pure function of the step),
plus the resolved model config (`model_config`), so tools rebuild the architecture the weights fit.
Loading uses `weights_only=True`, so every value stored here is a tensor, number, string or container
of those.

Files: `RUN_DIR/checkpoints/step_XXXXXXXX.pt`, written to a temporary name, flushed to disk and renamed,
then its manifest `step_XXXXXXXX.json` (size and SHA-256 of the data), written the same way after the
data. Resume takes the newest checkpoint that verifies against its manifest; a torn or corrupt one is
reported with its path and skipped for the previous one. A checkpoint without a manifest (written
before manifests existed, or the writer died between the two renames) counts as valid if it loads.
A save that fails (e.g. no space left) removes what it wrote, leaves the older checkpoints as they
were and raises `CheckpointSaveError` on every rank. Retention (`keep_last`) deletes only checkpoints
older than the newest `keep_last` intact ones, so it never deletes the only good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam3.checkpoint import LORA_CONFIG_KEY
from sam3.distributed.collectives import all_gather_objects
from sam3.distributed.env import get_rank

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapters"  # LoRA runs: the trainable tensors alone, beside each checkpoint
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_HASH_CHUNK = 1 << 24


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the checkpoints saved before it are untouched."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def manifest_path(path: str | Path) -> Path:
    """The manifest beside checkpoint `path`: `step_XXXXXXXX.json`."""
    return Path(path).with_suffix(".json")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run (named `step_XXXXXXXX.pt`, not verified), oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run that verifies (`verify_checkpoint`); each newer one that does
    not is logged with its path and the reason, and skipped."""
    checkpoints = list_checkpoints(run_dir)
    for path in reversed(checkpoints):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        logger.warning("skipping checkpoint %s: %s", path, problem)
    if checkpoints:
        logger.warning("none of the %d checkpoints in %s is intact", len(checkpoints), Path(run_dir) / CHECKPOINT_DIR)
    return None


def verify_checkpoint(path: str | Path) -> str | None:
    """None if `path` is intact, else what is wrong with it.

    With a manifest: the file's size and SHA-256 must match it. Without one: the file must load as a
    training checkpoint.
    """
    path = Path(path)
    manifest = manifest_path(path)
    if not manifest.exists():
        try:
            load_training_state(path)
        except (OSError, ValueError) as error:
            return f"it has no manifest and does not load ({error})"
        return None
    try:
        expected = json.loads(manifest.read_text())
        size, digest = int(expected["size"]), str(expected["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its manifest {manifest} is unreadable ({error})"
    try:
        actual_size = path.stat().st_size
        if actual_size != size:
            return f"it has {actual_size} bytes, its manifest says {size} (torn or truncated)"
        if _sha256(path) != digest:
            return "its SHA-256 does not match its manifest (corrupt)"
    except OSError as error:
        return f"it cannot be read ({error})"
    return None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path | None:
    """Writes `state` plus every rank's RNG states; collective (all ranks call it), rank 0 writes.

    Returns the path on rank 0 and None elsewhere. Keeps the newest `keep_last` intact checkpoints
    (0 keeps all). Raises `CheckpointSaveError` on every rank if rank 0 could not write it.
    """
    rng_states = all_gather_objects(_rng_state(), op="all-gather of RNG states")
    path = checkpoint_path(run_dir, step)
    error = None
    if get_rank() == 0:
        try:
            _write(path, {**state, "step": step, "rng_states": rng_states})
        except Exception as exc:  # reported on every rank below, so no rank waits for a save that failed
            error = f"could not save checkpoint {path}: {type(exc).__name__}: {exc}"
        else:
            logger.info("saved checkpoint %s", path)
            if keep_last > 0:
                _prune(run_dir, keep_last)
    errors = all_gather_objects(error, op="gather of the save result after the write")
    if errors[0] is not None:
        raise CheckpointSaveError(errors[0] + "; the checkpoints saved before it are untouched")
    return path if get_rank() == 0 else None


def adapters_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / ADAPTER_DIR / f"step_{step:08d}.pt"


def write_adapters(
    run_dir: str | Path, step: int, adapters: dict[str, torch.Tensor], lora_config: dict[str, Any]
) -> Path | None:
    """Rank 0, after `save_checkpoint`: the trainable tensors of a LoRA run alone, `{"adapters": {name: tensor},
    "lora_config": ..., "step": step}`, written to a temporary name and renamed; adapter files of pruned
    checkpoints are deleted. A convenience copy (the checkpoint holds the same tensors), so a failed write is
    logged, not raised. Returns the path, or None if the write failed."""
    path = adapters_path(run_dir, step)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"adapters": adapters, LORA_CONFIG_KEY: lora_config, "step": step}, tmp)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        logger.warning("could not write the adapters of step %d to %s: %s", step, path, error)
        return None
    kept = {p.name for p in list_checkpoints(run_dir)}
    for old in path.parent.iterdir():
        if _NAME.match(old.name) and old.name not in kept:
            old.unlink(missing_ok=True)
    logger.info("saved adapters %s (%d tensors, %.2f MB)", path, len(adapters), path.stat().st_size / 2**20)
    return path


def read_adapters(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapters and `lora` section of a file written by `write_adapters` (load them with
    `sam3.lora.apply_lora` + `sam3.lora.load_adapters` on the base model)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "adapters" not in obj or LORA_CONFIG_KEY not in obj:
        raise ValueError(f"{path} is not an adapters file of a LoRA run (no 'adapters' / {LORA_CONFIG_KEY!r} entry)")
    return obj["adapters"], obj[LORA_CONFIG_KEY]


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


def _write(path: Path, payload: dict[str, Any]) -> None:
    """Data then manifest, each to a temporary name, flushed and renamed; on failure removes both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = manifest_path(path)
    tmp, manifest_tmp = path.with_name(path.name + ".tmp"), manifest.with_name(manifest.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            hashing = _HashingWriter(file)
            torch.save(payload, hashing)
            file.flush()
            os.fsync(file.fileno())
        if tmp.stat().st_size != hashing.size:
            raise OSError(f"{tmp} has {tmp.stat().st_size} bytes after writing {hashing.size}")
        record = {"file": path.name, "size": hashing.size, "sha256": hashing.digest.hexdigest()}
        manifest.unlink(missing_ok=True)  # an old manifest must never vouch for the new data
        os.replace(tmp, path)
        with open(manifest_tmp, "w", encoding="utf-8") as file:
            json.dump(record, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(manifest_tmp, manifest)
        _fsync_dir(path.parent)
    except BaseException:
        for leftover in (tmp, manifest_tmp):
            leftover.unlink(missing_ok=True)
        if path.exists() and not manifest.exists():
            path.unlink()  # renamed but not vouched for: not a checkpoint of this save
        raise


class _HashingWriter:
    """A write-only file that hashes what passes through it (the data is hashed as it is written, not
    read back)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _prune(run_dir: str | Path, keep_last: int) -> None:
    """Deletes the checkpoints older than the newest `keep_last` intact ones (size as in the manifest)."""
    checkpoints = list_checkpoints(run_dir)
    intact = [p for p in checkpoints if _size_matches(p)]
    if len(intact) < keep_last:
        return
    oldest_kept = intact[-keep_last]
    for old in checkpoints[: checkpoints.index(oldest_kept)]:
        try:
            old.unlink()
            manifest_path(old).unlink(missing_ok=True)
        except OSError as error:
            logger.warning("could not delete old checkpoint %s: %s", old, error)


def _size_matches(path: Path) -> bool:
    try:
        return json.loads(manifest_path(path).read_text())["size"] == path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not fsync directories
    finally:
        os.close(fd)
