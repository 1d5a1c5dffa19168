"""From a composed config to a finished run, on one rank: the body of `train.py` and of SLURM tasks.

Order matters (DESIGN.md): the process group is initialised from the environment first, then anything
that needs it (the frame group, then the model, data and evaluation) is instantiated from the config.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from sam3.data.collate import collate_clips
from sam3.data.index import DataError
from sam3.data.readers import load_annotations
from sam3.data.sampler import FrameGroupSampler
from sam3.distributed.collectives import is_distributed
from sam3.distributed.env import init_distributed, read_dist_env, setup_logging, teardown_distributed
from sam3.distributed.frame_shard import FrameGroup, build_frame_group
from sam3.distributed.timeouts import DEFAULT_TIMEOUT_S, exit_bound_s
from sam3.eval.evaluate import EVAL_MODES, EvalConfig, evaluate
from sam3.eval.linking import LinkingConfig
from sam3.eval.track_mode import TrackConfig
from sam3.eval.visualize import PredictionStrip
from sam3.lora import LoraSpec, lora_spec
from sam3.model_builder import apply_runtime_policy
from sam3.train.finetune import OPTIM_KEYS, FreezeRules, apply_finetune
from sam3.train.sections import build_section
from sam3.train.trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)

# How to set the keys a user most often leaves unset.
REQUIRED_HINTS = {
    "paths.checkpoint": "the starting weights, e.g. paths.checkpoint=/path/to/sam3.pt",
    "paths.dataset_root": "the folder of your annotation files, e.g. paths.dataset_root=/data/my_videos",
    "paths.image_root": "the COCO image export (train/, valid/), e.g. paths.image_root=/data/my_roboflow_export",
}
# The top level of a run config (configs/base.yaml and the experiments); anything else is a typo.
TOP_LEVEL_KEYS = (
    "model",
    "video_model",
    "data",
    "loss",
    "optim",
    "trainer",
    "launcher",
    "seed",
    "run_dir",
    "device",
    "paths",
    "distributed",
    "runtime",
    "eval",
    "lora",
)


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """The `distributed:` section: how the ranks split the work and how long they wait for each other.

    Attributes:
        frame_group_size: F ranks share a clip's frames (F divides the world size); None = all ranks.
        timeout_s: the longest any collective waits for the other ranks; a rank that stops responding
            makes the others exit non-zero within `sam3.distributed.timeouts.exit_bound_s(timeout_s)`
            (timeout + max(5 s, 10 %)), naming the operation and the step. It must exceed the longest
            time one rank works while the others wait (rank 0 writing a checkpoint or computing
            validation metrics); see `sam3.distributed.timeouts` for the default.
    """

    frame_group_size: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, int | float) and self.timeout_s > 0):
            raise ValueError(f"distributed.timeout_s={self.timeout_s!r}: expected a positive number of seconds")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """The `runtime:` section: how the built model runs (`sam3.model_builder.apply_runtime_policy`).

    Attributes:
        act_checkpoint: activation checkpointing on every part that supports it (acts in training only).
        compile: `torch.compile` the image trunk, fusion encoder and decoder.
    """

    act_checkpoint: bool = False
    compile: bool = False


@dataclass(frozen=True, kw_only=True)
class EvalSection:
    """The `eval:` section: validation during and after training (`sam3.eval.evaluate.evaluate`).

    Attributes:
        score_thresh: operating point of cgF1, HOTA and TETA.
        max_videos: evaluate only the first N validation videos (None = all).
        mode: "link" (detector on every frame, masklets by linking) or "track" (detector on the
            detection frames, masklets by the memory tracker; `sam3.eval.track_mode`).
        selection: detections kept before linking (and before they become tracker objects).
        linking: masklet linking rules (mode "link").
        track: detection frames and the new-object rule (mode "track").
        async_gather: overlap each frame chunk's all-gather with the next chunk's compute.
        gather_backbone_out: gather each frame's backbone features instead of its detector outputs.
    """

    score_thresh: float = 0.5
    max_videos: int | None = None
    mode: str = "link"
    selection: EvalConfig = EvalConfig()
    linking: LinkingConfig = LinkingConfig()
    track: TrackConfig = TrackConfig()
    async_gather: bool = True
    gather_backbone_out: bool = False

    def __post_init__(self) -> None:
        if self.mode not in EVAL_MODES:
            raise ValueError(f"eval.mode={self.mode!r}: expected one of {list(EVAL_MODES)}")
        object.__setattr__(self, "selection", build_section(EvalConfig, self.selection, "eval.selection"))
        object.__setattr__(self, "linking", build_section(LinkingConfig, self.linking, "eval.linking"))
        object.__setattr__(self, "track", build_section(TrackConfig, self.track, "eval.track"))


def check_config(cfg: DictConfig) -> None:
    """Raises a ValueError naming every required key left unset (`???`) and how to set it, or every
    unknown top-level key; runs before any work."""
    missing = _missing_keys(cfg)
    if missing:
        lines = [f"  {key}: {REQUIRED_HINTS.get(key, f'add {key}=VALUE to the command line')}" for key in missing]
        raise ValueError("required config values are not set; add them as overrides:\n" + "\n".join(lines))
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; valid keys: {list(TOP_LEVEL_KEYS)}")


def run(cfg: DictConfig, on_trainer: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
    """Initialises distributed, builds everything from `cfg` and runs the trainer; returns its summary.

    `on_trainer(trainer)`, if given, is called once the trainer is built and before it runs (the SLURM
    launcher uses it to route preemption signals to `Trainer.request_checkpoint`).
    """
    check_config(cfg)
    distributed = _section(cfg, "distributed", DistributedConfig)
    owns_group = not is_distributed()  # a caller (e.g. a test spawner) may have set it up already
    dist_env = init_distributed(timeout_s=distributed.timeout_s) if owns_group else read_dist_env()
    failed = False
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
        if dist_env.is_distributed:
            logger.info(
                "collective timeout %g s: a rank that stops responding ends the others within %g s",
                distributed.timeout_s,
                exit_bound_s(distributed.timeout_s),
            )
        return trainer.run()
    except BaseException:
        failed = True
        raise
    finally:
        # After a failure no clean-up collective: destroying the group may wait on peers that will never
        # come. The process exits, its connections close and the peers' collectives fail at once.
        if owns_group and not failed:
            teardown_distributed()


def build_trainer(cfg: DictConfig, device: torch.device) -> Trainer:
    """Instantiates frame group, model, criterion, data and evaluation from `cfg` (process group ready)."""
    config = _section(cfg, "trainer", TrainerConfig)
    group = build_frame_group(_section(cfg, "distributed", DistributedConfig).frame_group_size)
    model = build_model(cfg, device)
    _seed_everything(int(cfg.seed) + group.rank)  # distinct dropout / drop-path streams per rank
    criterion = instantiate(cfg.loss).to(device)
    optim = instantiate(cfg.optim.optimizer, _convert_="all")
    schedule = instantiate(cfg.optim.schedule, _convert_="all")
    max_bad_samples = _max_bad_samples(cfg)
    train_loader, bad_records = None, 0
    if config.mode == "train":
        train_loader = build_train_loader(cfg, group)
        bad_records = _bad_records_at_load(train_loader.dataset, max_bad_samples)
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
        visualize=PredictionStrip(score_thresh=_section(cfg, "eval", EvalSection).score_thresh),
        model_config=OmegaConf.to_container(cfg.model, resolve=True),
        lora_config=None if (lora := lora_section(cfg)) is None else asdict(lora),
        max_bad_samples=max_bad_samples,
        bad_records=bad_records,
    )


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The video model of a run config, as training runs it: weights loaded, runtime policy applied,
    on `device`. Seeded with `cfg.seed`, so every rank builds the same initial weights."""
    runtime = _section(cfg, "runtime", RuntimeConfig)
    _seed_everything(int(cfg.seed))
    model = instantiate(cfg.video_model, image_model=instantiate(cfg.model))
    model = apply_finetune(model, rules=freeze_rules(cfg), lora=lora_section(cfg))
    return apply_runtime_policy(model, act_checkpoint=runtime.act_checkpoint, compile=runtime.compile).to(device)


def freeze_rules(cfg: DictConfig) -> FreezeRules:
    """`optim.freeze`, `optim.train_only` and `trainer.frozen_params` of a run config; an unknown key of the
    `optim` group raises."""
    unknown = sorted(set(cfg.optim) - set(OPTIM_KEYS))
    if unknown:
        raise ValueError(f"optim: unknown key(s) {unknown}; valid keys: {list(OPTIM_KEYS)}")
    rules = {key: tuple(cfg.optim.get(key) or ()) for key in ("freeze", "train_only")}
    return FreezeRules(**rules, keep_frozen=_section(cfg, "trainer", TrainerConfig).frozen_params)


def lora_section(cfg: DictConfig) -> LoraSpec | None:
    """The `lora:` section (`lora=<preset>` on the command line, configs/lora/), or None without one."""
    if cfg.get("lora") is None:
        return None
    return lora_spec(OmegaConf.to_container(cfg.lora, resolve=True))


def build_train_loader(cfg: DictConfig, group: FrameGroup) -> DataLoader:
    """This rank's loader: its frame group's clips, its own frames of each clip. With
    `data.max_bad_samples` > 0 the dataset skips bad annotation records (`on_error="skip"`) and reports
    clips it cannot load instead of raising; both count against the limit."""
    reporting = {"on_bad_sample": "report", "on_error": "skip"} if _max_bad_samples(cfg) > 0 else {}
    rank_args = {"group_size": group.group_size, "group_rank": group.group_rank, **reporting}
    if "datasets" in cfg.data.train:  # a mixed dataset (sam3.data.mixed): each member is built for this rank
        members = [name for name, entry in cfg.data.train.datasets.items() if entry is not None]
        rank_args = {"datasets": {name: {"dataset": rank_args} for name in members}}
    dataset = instantiate(cfg.data.train, **rank_args, _convert_="all")
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
    """`evaluate(model, step)` on the validation split, writing predictions under the run directory.

    `data.val` is one dataset config, or a mapping of names to dataset configs (null ones left out): each
    is then evaluated and its metrics come back as `NAME/METRIC` (logged as `val/NAME/METRIC`), predictions
    in `eval/NAME/`.
    """
    rank_args = {"group_size": group.group_size, "group_rank": group.group_rank, "_convert_": "all"}
    if "_target_" in cfg.data.val:
        datasets = {"": instantiate(cfg.data.val, **rank_args)}
    else:
        named = {str(name): node for name, node in cfg.data.val.items() if node is not None}  # NAME=null: left out
        datasets = {name: instantiate(node, **rank_args) for name, node in named.items()}
        if not datasets:
            raise ValueError("data.val names no dataset: give a dataset config or named dataset configs (or null)")
    return partial(
        _evaluate_at_step,
        evaluate=evaluate,
        datasets=datasets,
        group=group,
        device=device,
        out_dir=Path(cfg.run_dir) / "eval",
        eval_cfg=_section(cfg, "eval", EvalSection),
    )


def write_configs(cfg: DictConfig, run_dir: Path) -> None:
    """`config.yaml` as composed (interpolations kept) and `config_resolved.yaml`, before step 0."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _evaluate_at_step(model, step, *, evaluate, datasets, group, device, out_dir, eval_cfg: EvalSection):
    """Metrics of every validation dataset; a named one's keys (and predictions folder) carry its name."""
    metrics = {}
    for name, dataset in datasets.items():
        results = evaluate(
            model,
            dataset,
            group,
            out_path=(out_dir / name if name else out_dir) / f"predictions_step{step:08d}.json",
            device=device,
            score_thresh=eval_cfg.score_thresh,
            config=eval_cfg.selection,
            linking=eval_cfg.linking,
            max_videos=eval_cfg.max_videos,
            async_gather=eval_cfg.async_gather,
            gather_backbone_out=eval_cfg.gather_backbone_out,
            mode=eval_cfg.mode,
            track=eval_cfg.track,
        )
        metrics.update({f"{name}/{key}" if name else key: value for key, value in results.items()})
    return metrics


def _section(cfg: DictConfig, key: str, cls: type):
    """The typed section `key` of a run config (defaults when absent); unknown keys raise."""
    values = OmegaConf.to_container(cfg[key], resolve=True) if key in cfg else {}
    return build_section(cls, values, key)


def _max_bad_samples(cfg: DictConfig) -> int:
    """`data.max_bad_samples` (absent = 0: the first bad training sample stops the run)."""
    value = cfg.data.get("max_bad_samples", 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"data.max_bad_samples={value!r}: expected an integer >= 0 (0 = stop at the first bad sample)")
    return value


def _bad_records_at_load(dataset: Any, max_bad_samples: int) -> int:
    """Annotation records the training dataset (every member of a mixed one) skipped when it read its
    files (every rank reads whole files, so every rank gets the same count); more than `max_bad_samples`
    raises the first one's error."""
    members = getattr(dataset, "datasets", {"": dataset}).values()
    indexes = [getattr(member, "index", None) for member in members]
    num_skipped = sum(getattr(index, "num_skipped", 0) for index in indexes)
    if num_skipped <= max_bad_samples:
        return num_skipped
    index = next(index for index in indexes if index.num_skipped)
    try:
        load_annotations(index.source, format=index.format)
    except DataError as e:
        raise DataError(
            e.path,
            e.record,
            e.field_name,
            f"{e.problem} ({num_skipped} bad records in the file, more than data.max_bad_samples="
            f"{max_bad_samples} allows: fix them or raise the limit)",
        ) from None
    raise AssertionError(f"{index.source}: {num_skipped} records were skipped but the file now reads cleanly")


def _missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted paths of the `???` values under `node`, found without resolving any interpolation (one
    that reads a missing value would raise before naming the key)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    found = []
    for key in keys:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            found.append(path)
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig | ListConfig):
            found.extend(_missing_keys(node[key], f"{path}."))
    return found


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
