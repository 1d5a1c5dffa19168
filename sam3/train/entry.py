"""From a composed config to a finished run, on one rank: the body of `train.py` and of SLURM tasks.

Order matters (DESIGN.md): the process group is initialised from the environment first, then anything
that needs it (the frame group, then the model, data and evaluation) is instantiated from the config.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from sam3.data.collate import collate_clips
from sam3.data.sampler import FrameGroupSampler
from sam3.distributed.collectives import is_distributed
from sam3.distributed.env import init_distributed, read_dist_env, setup_logging, teardown_distributed
from sam3.distributed.frame_shard import FrameGroup, build_frame_group
from sam3.eval.visualize import PredictionStrip
from sam3.train.trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)

# Keys that must be set before any work, with how to set them.
REQUIRED_PATHS = {
    "paths.checkpoint": "the starting weights, e.g. paths.checkpoint=/path/to/sam3.pt",
    "paths.dataset_root": "the folder of your annotation files, e.g. paths.dataset_root=/data/my_videos",
}


def check_required(cfg: DictConfig) -> None:
    """Raises a ValueError naming every required key left unset (`???`) and how to set it."""
    missing = [key for key in REQUIRED_PATHS if _is_missing(cfg, key)]
    if missing:
        lines = [f"  {key}: {REQUIRED_PATHS[key]}" for key in missing]
        raise ValueError("required config values are not set; add them as overrides:\n" + "\n".join(lines))


def run(cfg: DictConfig, on_trainer: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
    """Initialises distributed, builds everything from `cfg` and runs the trainer; returns its summary.

    `on_trainer(trainer)`, if given, is called once the trainer is built and before it runs (the SLURM
    launcher uses it to route preemption signals to `Trainer.request_checkpoint`).
    """
    check_required(cfg)
    owns_group = not is_distributed()  # a caller (e.g. a test spawner) may have set it up already
    dist_env = init_distributed() if owns_group else read_dist_env()
    try:
        setup_logging(dist_env.rank)
        run_dir = Path(cfg.run_dir)
        _add_file_log(run_dir, dist_env.rank)
        if dist_env.is_main:
            write_configs(cfg, run_dir)
        device = _device(cfg.get("device", "auto"), dist_env.local_rank)
        trainer = build_trainer(cfg, device)
        if on_trainer is not None:
            on_trainer(trainer)
        return trainer.run()
    finally:
        if owns_group:
            teardown_distributed()


def build_trainer(cfg: DictConfig, device: torch.device) -> Trainer:
    """Instantiates frame group, model, criterion, data and evaluation from `cfg` (process group ready)."""
    config = _trainer_config(cfg)
    group = build_frame_group(cfg.distributed.frame_group_size)
    _seed_everything(int(cfg.seed))  # the same initial weights on every rank
    model = instantiate(cfg.model).to(device)
    _seed_everything(int(cfg.seed) + group.rank)  # distinct dropout / drop-path streams per rank
    criterion = instantiate(cfg.loss).to(device)
    optim = instantiate(cfg.optim.optimizer, _convert_="all")
    schedule = instantiate(cfg.optim.schedule, _convert_="all")
    train_loader = None
    if config.mode == "train":
        train_loader = build_train_loader(cfg, group)
    evaluate_fn = build_evaluate(cfg, group, device) if cfg.data.get("val") is not None else None
    return Trainer(
        model=model,
        criterion=criterion,
        train_loader=train_loader,
        evaluate=evaluate_fn,
        config=config,
        optim=optim,
        schedule=schedule,
        run_dir=cfg.run_dir,
        device=device,
        weights_loaded=cfg.paths.get("checkpoint") is not None,
        visualize=PredictionStrip(score_thresh=float(cfg.get("eval", {}).get("score_thresh", 0.5))),
    )


def build_train_loader(cfg: DictConfig, group: FrameGroup) -> DataLoader:
    """This rank's loader: its frame group's clips, its own frames of each clip."""
    dataset = instantiate(cfg.data.train, group_size=group.group_size, group_rank=group.group_rank, _convert_="all")
    sampler = FrameGroupSampler(
        len(dataset), num_groups=group.num_groups, group_idx=group.group_idx, shuffle=True, seed=int(cfg.seed)
    )
    workers = int(cfg.data.num_workers)
    return DataLoader(
        dataset,
        batch_size=int(cfg.data.clips_per_batch),
        sampler=sampler,
        collate_fn=collate_clips,
        num_workers=workers,
        persistent_workers=False,
        # a private generator: iterator creation must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(int(cfg.seed)),
    )


def build_evaluate(cfg: DictConfig, group: FrameGroup, device: torch.device):
    """`evaluate(model, step)` on the validation split, writing predictions under the run directory."""
    from sam3.eval.evaluate import evaluate

    dataset = instantiate(cfg.data.val, group_size=group.group_size, group_rank=group.group_rank, _convert_="all")
    eval_cfg = cfg.get("eval", {})
    return partial(
        _evaluate_at_step,
        evaluate=evaluate,
        dataset=dataset,
        group=group,
        device=device,
        out_dir=Path(cfg.run_dir) / "eval",
        score_thresh=float(eval_cfg.get("score_thresh", 0.5)),
        max_videos=eval_cfg.get("max_videos"),
    )


def write_configs(cfg: DictConfig, run_dir: Path) -> None:
    """`config.yaml` as composed (interpolations kept) and `config_resolved.yaml`, before step 0."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _evaluate_at_step(model, step, *, evaluate, dataset, group, device, out_dir, score_thresh, max_videos):
    return evaluate(
        model,
        dataset,
        group,
        out_path=out_dir / f"predictions_step{step:08d}.json",
        device=device,
        score_thresh=score_thresh,
        max_videos=max_videos,
    )


def _trainer_config(cfg: DictConfig) -> TrainerConfig:
    values = OmegaConf.to_container(cfg.trainer, resolve=True)
    try:
        return TrainerConfig(**values)
    except TypeError as error:
        valid = ", ".join(TrainerConfig.__dataclass_fields__)
        raise ValueError(f"bad trainer config: {error}; valid keys: {valid}") from None


def _is_missing(cfg: DictConfig, key: str) -> bool:
    node, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, node) if node else cfg
    return parent is not None and leaf in parent and OmegaConf.is_missing(parent, leaf)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _add_file_log(run_dir: Path, rank: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / ("train.log" if rank == 0 else f"train_rank{rank}.log"))
    handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank} %(name)s %(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
