"""Train or evaluate from a Hydra config: one process, torchrun (one or many nodes) or SLURM tasks.

    python train.py --config-name demo_shapes_video                      # one process, foreground
    torchrun --nproc_per_node 8 train.py --config-name roboflow_video_ft \\
        paths.checkpoint=/path/to/sam3.pt paths.dataset_root=/path/to/videos
    python train.py --config-name roboflow_video_ft ... trainer.mode=eval
    python train.py --config-name roboflow_video_ft ... launcher=slurm launcher.nodes=2   # submits (slurm/README.md)

Global torch flags are set here, once, never at import time. SIGTERM or SIGUSR1 saves a checkpoint at
the next step boundary and exits with status 75 (`sam3.train.signals.EXIT_CHECKPOINTED`); the same
command resumes it. A distributed run that fails exits at once with status 1 after logging the
traceback (no interpreter clean-up, which could wait on peers that will never answer), so torchrun
stops the other ranks (`sam3.distributed.timeouts`).
"""

import logging
import os
import sys
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from sam3.distributed.collectives import is_distributed
from sam3.train.entry import check_config, run
from sam3.train.signals import EXIT_CHECKPOINTED, StopOnSignal


def _exit_now(status: int) -> None:
    """Flushes the logs and ends the process with `status`, skipping interpreter clean-up."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@hydra.main(config_path="configs", config_name=None, version_base="1.3")
def main(cfg: DictConfig) -> Any:
    try:
        check_config(cfg)
    except ValueError as error:  # a user's config mistake: the message says the fix, no traceback
        raise SystemExit(f"train.py: {error}") from None
    if cfg.launcher.name == "slurm":  # submit instead of running here (sam3/launch/slurm.py)
        from sam3.launch.slurm import launch

        return launch(cfg)  # in a sweep, the point that the SubmitSweep callback collects
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # one run directory per sweep point
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log = logging.getLogger("sam3.train")
    try:
        with StopOnSignal() as stop:
            summary = run(cfg, on_trainer=stop.attach)
            if summary.get("interrupted"):
                # Still inside the handler's scope: a launcher that signals this rank again while it
                # exits (torchrun stops the others once one rank has exited) cannot change the status.
                log.warning(
                    "stopped on a signal at step %d (checkpoint saved): exit %d", summary["step"], EXIT_CHECKPOINTED
                )
                _exit_now(EXIT_CHECKPOINTED)
    except Exception:
        if not is_distributed():
            raise  # one process: Hydra prints the error as usual
        log.exception("this rank failed; exiting with status 1 without clean-up")
        _exit_now(1)
    log.info("finished: %s", {k: v for k, v in summary.items() if k != "metrics"})


if __name__ == "__main__":
    main()
