"""Step / evaluation / checkpoint cadence of a run. Receives built objects; builds nothing from strings.

The trainer wraps the video model in DDP over the whole world; the frame-group semantics live in the
data (each rank holds its own frames) and in the loss normalisation of `sam3.train.step`, which it
reuses. Gradient accumulation counts N over all micro-batches of a step, so k micro-batches of b clips
equal one step on k*b clips. Checkpoints hold every piece of state, so a run killed at any point
resumes from its last checkpoint to the same weights as an uninterrupted run. Every phase that
communicates runs as a named `sam3.distributed.timeouts.operation` with the current step, so a rank
that stops responding makes the others fail with the phase and step named (`distributed.timeout_s`,
exit bound in `sam3.distributed.timeouts`). The LR of step s is each
group's `initial_lr` (from `sam3.train.optim.param_groups`) times `lr_factor(s, schedule)`, a pure function
of s, so there is no scheduler state to save.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sam3.checkpoint import LORA_CONFIG_KEY, MODEL_CONFIG_KEY
from sam3.data.collate import BadBatch, BadClip
from sam3.data.index import DataError
from sam3.distributed.collectives import all_gather_objects, any_rank
from sam3.distributed.env import get_rank, get_world_size
from sam3.distributed.timeouts import operation, set_step
from sam3.lora import trainable_state_dict
from sam3.train.checkpoint import (
    latest_checkpoint,
    load_training_state,
    restore_rng_states,
    save_checkpoint,
    write_adapters,
)
from sam3.train.optim import OptimConfig, ScheduleConfig, apply_lr, build_optimizer, lr_factor
from sam3.train.step import forward_backward, wrap_ddp

logger = logging.getLogger(__name__)

INTERACTIVE_PARAMS = ("tracker.*", "backbone.vision_backbone.sam2_convs.*")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """The `trainer:` section of a config. Unknown keys are rejected when it is built.

    Attributes:
        mode: "train" (train, validating periodically) or "eval" (evaluate once, no optimizer).
        max_steps: optimizer steps of the run.
        grad_accum_steps: micro-batches per optimizer step.
        checkpoint_every: save every this many steps (and always at the end); 0 = only at the end.
        keep_last: checkpoints kept in the run directory (0 keeps all).
        log_every: steps between log lines / scalars.
        eval_every: steps between validations (0 = only at the end of training).
        eval_at_start: also evaluate the starting weights (step 0).
        amp: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "none".
        frozen_params: globs of full parameter names kept frozen (a pattern may match nothing, e.g. in a
            model built with tracker=null). Default: the interactive heads and their pyramid, which
            detector fine-tuning does not train, so a fine-tuned checkpoint keeps the released ones.
            Applied when the model is built (`sam3.train.finetune`), with the freeze presets of the `optim`
            group (`optim=freeze_vision`, ...).
        find_unused_parameters: tell DDP that some parameters get no gradient. The released layout has
            parameters image training never uses (neck level 0.5x, text projection, semantic head, ...),
            so this defaults to true; freezing those parameters instead allows false.
        max_nonfinite_skips: steps with a non-finite loss that may be skipped before the run stops.
        allow_random_init: let eval mode run without a checkpoint.
        vis_every: steps between prediction images in TensorBoard (0 = never).
    """

    mode: str = "train"
    max_steps: int = 100
    grad_accum_steps: int = 1
    checkpoint_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    eval_every: int = 0
    eval_at_start: bool = False
    amp: str = "auto"
    frozen_params: tuple[str, ...] = INTERACTIVE_PARAMS
    find_unused_parameters: bool = True
    max_nonfinite_skips: int = 0
    allow_random_init: bool = False
    vis_every: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("train", "eval"):
            raise ValueError(f"trainer.mode={self.mode!r}: expected 'train' or 'eval'")
        if self.amp not in ("auto", "bf16", "none"):
            raise ValueError(f"trainer.amp={self.amp!r}: expected 'auto', 'bf16' or 'none'")
        if self.grad_accum_steps < 1 or self.max_steps < 0:
            raise ValueError("trainer.grad_accum_steps must be >= 1 and trainer.max_steps >= 0")


EvaluateFn = Callable[[nn.Module, int], dict[str, float]]


class Trainer:
    """Runs training (with periodic validation and checkpoints) or a single evaluation.

    Args:
        model: the video model (not yet wrapped in DDP), on `device`, with its frozen parameters already
            frozen (`sam3.train.finetune`): only parameters with `requires_grad` get optimizer state and
            DDP gradient buckets.
        criterion: `criterion(outputs, targets, normalization, step) -> (loss, components)`.
        train_loader: yields this rank's `ClipBatch`es; its sampler must offer `set_epoch`, `resume`
            (epoch, position) and `epoch`.
        evaluate: `evaluate(model, step) -> metrics`, the evaluation issue's `evaluate` bound to the
            validation data (every rank calls it; rank 0 gets the metrics), or None.
        config: trainer settings.
        optim: AdamW settings and the parameter-group rules (base LR per group, layer decay, which
            parameters get no weight decay); applied to the trainable parameters.
        schedule: LR multiplier as a pure function of the step, so a resumed run gets the same LRs.
        run_dir: where checkpoints, logs and TensorBoard files go.
        device: the model's device.
        weights_loaded: whether starting weights came from a checkpoint (eval mode requires it).
        visualize: `visualize(model, batch) -> (3, H, W) uint8` image for TensorBoard, or None.
        model_config: the resolved `model` config section, stored in every checkpoint so that tools
            rebuild the model it was trained with (`sam3.model_builder.build_model`).
        max_bad_samples: `data.max_bad_samples`, training clips that may fail to load (`BadBatch`es
            from a loader whose dataset reports bad samples) over the whole run before it stops.
        bad_records: annotation records the training data skipped when it was read; they count
            against `max_bad_samples` from the start.
        lora_config: the `lora` section of a LoRA run (`sam3.lora.LoraSpec` fields), or None. Stored in
            every checkpoint (tools rebuild the adapters from it), and each save also writes the trainable
            tensors alone to `RUN_DIR/adapters/step_XXXXXXXX.pt` (`write_adapters`).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        criterion: nn.Module,
        train_loader: DataLoader | None,
        evaluate: EvaluateFn | None,
        config: TrainerConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        run_dir: str | Path,
        device: torch.device,
        weights_loaded: bool = False,
        visualize: Callable[..., torch.Tensor] | None = None,
        model_config: dict[str, Any] | None = None,
        max_bad_samples: int = 0,
        bad_records: int = 0,
        lora_config: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.train_loader = train_loader
        self.evaluate_fn = evaluate
        self.config = config
        self.optim_config = optim
        self.schedule = schedule
        self.run_dir = Path(run_dir)
        self.device = device
        self.weights_loaded = weights_loaded
        self.visualize = visualize
        self.model_config = model_config
        self.max_bad_samples = max_bad_samples
        self.bad_records = bad_records
        self.lora_config = lora_config
        self.bad_samples = bad_records  # records and clips skipped so far, over every rank and resumed runs
        self.rank = get_rank()
        self.world_size = get_world_size()
        self.step = 0
        self.epoch = 0
        self.position = 0  # clips of the current epoch this frame group has consumed
        self.nonfinite_skips = 0
        self._saved_step: int | None = None  # step of the checkpoint this run wrote or resumed from
        self._checkpoint_requested = threading.Event()
        self._writer = None
        self._stats_file = None

    # ----------------------------------------------------------------------------------------- API
    def request_checkpoint(self) -> None:
        """Asks every rank to save at the next step boundary and return (safe in a signal handler)."""
        self._checkpoint_requested.set()

    def run(self) -> dict[str, Any]:
        """Trains or evaluates according to `config.mode`; returns a summary (metrics, final step)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.config.mode == "eval":
                return self._run_eval()
            return self._run_train()
        finally:
            if self._writer is not None:
                self._writer.close()
            if self._stats_file is not None:
                self._stats_file.close()

    # ------------------------------------------------------------------------------------ eval mode
    def _run_eval(self) -> dict[str, Any]:
        resume = self._newest_valid_checkpoint()
        if resume is not None:
            state = load_training_state(resume)
            self.model.load_state_dict(state["model"])
            self.step = int(state["step"])
            self.weights_loaded = True
            logger.info("evaluating the weights of %s", resume)
        if not self.weights_loaded and not self.config.allow_random_init:
            raise ValueError(
                "trainer.mode=eval needs trained weights: set paths.checkpoint=/path/to/checkpoint.pt "
                "(a released SAM3 checkpoint or one of ours), point run_dir= at a run with checkpoints, "
                "or pass trainer.allow_random_init=true to evaluate randomly initialised weights."
            )
        if self.evaluate_fn is None:
            raise ValueError("trainer.mode=eval needs validation data (data.val) to evaluate on")
        set_step(self.step)
        with operation("evaluation", watched=False):
            metrics = self.evaluate_fn(self.model, self.step)
        self._log_metrics(metrics, prefix="val")
        return {"mode": "eval", "metrics": metrics, "step": self.step}

    # ----------------------------------------------------------------------------------- train mode
    def _run_train(self) -> dict[str, Any]:
        if self.train_loader is None:
            raise ValueError("trainer.mode=train needs training data (data.train)")
        self.optimizer = build_optimizer(self.model, self.optim_config)
        resumed_from = self._maybe_resume()
        if resumed_from is None and self.bad_records:
            self._write_stats({"step": 0, "data/bad_samples": self.bad_samples, "data/bad_records": self.bad_records})
        ddp_model = self._wrap_ddp()
        autocast_dtype = self._autocast_dtype()
        history: dict[str, Any] = {"metrics": {}}
        if self.config.eval_at_start and resumed_from is None and self.evaluate_fn is not None:
            history["metrics"][0] = self._validate()
        batches = self._batches()
        start_time = time.perf_counter()
        start_step = self.step
        while self.step < self.config.max_steps:
            set_step(self.step)
            if any_rank(self._checkpoint_requested.is_set(), self.device, op="vote: checkpoint requested"):
                if not self._saved_at_this_step():
                    self._save()
                logger.warning("checkpoint requested: saved step %d and stopping", self.step)
                history["interrupted"] = True
                break
            data_start = time.perf_counter()
            micro_batches = [self._next_good_batch(batches) for _ in range(self.config.grad_accum_steps)]
            data_time = time.perf_counter() - data_start
            apply_lr(self.optimizer, lr_factor(self.step, self.schedule))
            step_start = time.perf_counter()
            with operation("forward/backward (frame gathers, DDP all-reduce of gradients)", watched=False):
                losses = forward_backward(
                    ddp_model, self.criterion, micro_batches, self.step, self.device, autocast_dtype
                )
            if not any_rank(not bool(torch.isfinite(losses.loss)), self.device, op="vote: non-finite loss"):
                grad_norm = self._clip_gradients()
                self.optimizer.step()
            else:
                grad_norm = self._handle_nonfinite(losses)
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            step_time = time.perf_counter() - step_start
            num_frames = sum(b.num_local_frames for b in micro_batches) * self.world_size
            if self.step % self.config.log_every == 0 or self.step == self.config.max_steps:
                self._log_step(losses, grad_norm, step_time, data_time, num_frames, start_time, start_step)
            if self.config.vis_every and self.step % self.config.vis_every == 0 and self.visualize is not None:
                self._log_image(micro_batches[0])
            if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                self._save()
            if self.config.eval_every and self.step % self.config.eval_every == 0 and self.step < self.config.max_steps:
                history["metrics"][self.step] = self._validate()
        set_step(self.step)  # the final checkpoint and validation
        if not history.get("interrupted"):
            if not self._saved_at_this_step():
                self._save()
            if self.evaluate_fn is not None:
                history["metrics"][self.step] = self._validate()
        history["step"] = self.step
        return history

    # ---------------------------------------------------------------------------------- internals
    def _wrap_ddp(self) -> nn.Module:
        if self.world_size == 1:
            return self.model
        with operation("DDP set-up (broadcast of the initial weights)"):
            return wrap_ddp(self.model, self.device, find_unused_parameters=self.config.find_unused_parameters)

    def _autocast_dtype(self) -> torch.dtype | None:
        if self.config.amp == "bf16" or (self.config.amp == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None

    def _batches(self) -> Iterator:
        """This rank's batches forever, epoch after epoch, continuing from (epoch, position)."""
        sampler = self.train_loader.sampler
        sampler.resume(self.epoch, self.position)
        while True:
            for batch in self.train_loader:
                self.position += batch.num_clips
                yield batch
            self.epoch += 1
            self.position = 0
            sampler.set_epoch(self.epoch)

    def _next_good_batch(self, batches: Iterator) -> Any:
        """The next micro-batch that loaded on every rank. A clip is bad on the ranks holding its bad
        frame only, so the ranks vote (one all-reduce per micro-batch, only with max_bad_samples > 0);
        if any rank's batch is bad, every rank drops its batch and takes the next one, so the ranks run
        the same steps. The count is global (a clip bad on two ranks counts once) and checkpointed."""
        while True:
            batch = next(batches)
            bad = batch.bad_clips if isinstance(batch, BadBatch) else []
            if self.max_bad_samples == 0:
                if bad:
                    raise bad[0].error()
                return batch
            if not any_rank(bool(bad), self.device, op="vote: bad sample"):
                return batch
            reports: dict[Any, list[BadClip]] = {}
            for rank_bad in all_gather_objects(bad, op="gather of bad-sample reports"):
                for clip in rank_bad:
                    reports.setdefault(clip.clip_id, []).append(clip)
            for clips in reports.values():
                self._count_bad_sample(clips)

    def _count_bad_sample(self, clips: list[BadClip]) -> None:
        """Counts one bad clip (`clips`: its reports, one per rank that found it bad): raises past the limit,
        else logs it and writes the running count to stats.jsonl."""
        self.bad_samples += 1
        first = clips[0]
        if self.bad_samples > self.max_bad_samples:
            raise DataError(
                first.path,
                first.record,
                first.field_name,
                f"{first.problem} (bad sample {self.bad_samples} of the run, more than data.max_bad_samples="
                f"{self.max_bad_samples} allows: fix or remove the file, or raise the limit)",
            )
        errors = "; ".join(str(clip.error()) for clip in clips)
        logger.warning(
            "skipping bad sample %d of data.max_bad_samples=%d (clip %s of video %s; every rank drops its "
            "micro-batch): %s",
            self.bad_samples,
            self.max_bad_samples,
            first.clip_id,
            first.video_id,
            errors,
        )
        record = {"clip_id": first.clip_id, "video_id": first.video_id, "error": errors}
        self._write_stats({"step": self.step, "data/bad_samples": self.bad_samples, "bad_sample": record})

    def _newest_valid_checkpoint(self) -> Path | None:
        """The run's newest checkpoint that verifies, chosen by rank 0 so that every rank loads the same."""
        chosen = latest_checkpoint(self.run_dir) if self.rank == 0 else None
        return all_gather_objects(chosen, op="gather of the checkpoint to resume from")[0]

    def _saved_at_this_step(self) -> bool:
        return self._saved_step == self.step

    def _maybe_resume(self) -> Path | None:
        path = self._newest_valid_checkpoint()
        if path is None:
            return None
        state = load_training_state(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))
        self.bad_samples = int(state.get("bad_samples", 0))
        restore_rng_states(state)
        self._saved_step = self.step
        logger.info("resumed from %s (step %d, epoch %d, position %d)", path, self.step, self.epoch, self.position)
        return path

    def _save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "position": self.position,
            "nonfinite_skips": self.nonfinite_skips,
            "bad_samples": self.bad_samples,
            "world_size": self.world_size,
        }
        if self.model_config is not None:
            state[MODEL_CONFIG_KEY] = self.model_config
        if self.lora_config is not None:
            state[LORA_CONFIG_KEY] = self.lora_config
        with operation("checkpoint", watched=False):  # rank 0 writes while the others wait for its result
            path = save_checkpoint(self.run_dir, self.step, state, self.config.keep_last)
            if path is not None and self.lora_config is not None:
                write_adapters(self.run_dir, self.step, trainable_state_dict(self.model), self.lora_config)
        self._saved_step = self.step

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.optim_config.grad_clip
        if max_norm is not None and max_norm > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0

    def _handle_nonfinite(self, losses) -> float:
        parts = {k: float(v) for k, v in losses.components.items()}
        message = f"non-finite loss at step {self.step}: loss={float(losses.loss)}, components={parts}"
        if self.nonfinite_skips >= self.config.max_nonfinite_skips:
            raise FloatingPointError(
                message + f" (skipped {self.nonfinite_skips} of trainer.max_nonfinite_skips="
                f"{self.config.max_nonfinite_skips} allowed); lower the LR or check the data"
            )
        self.nonfinite_skips += 1
        logger.warning(
            "%s: skipping the step (%d of %d allowed)", message, self.nonfinite_skips, self.config.max_nonfinite_skips
        )
        return float("nan")

    def _validate(self) -> dict[str, float]:
        was_training = self.model.training
        with operation("validation", watched=False):
            metrics = self.evaluate_fn(self.model, self.step)
        self.model.train(was_training)
        self._log_metrics(metrics, prefix="val")
        return metrics

    # ------------------------------------------------------------------------------------ logging
    def _tensorboard(self):
        if self._writer is None and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._writer

    def _write_stats(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        if self._stats_file is None:
            self._stats_file = open(self.run_dir / "stats.jsonl", "a", encoding="utf-8")
        self._stats_file.write(json.dumps(record) + "\n")
        self._stats_file.flush()

    def _log_step(self, losses, grad_norm, step_time, data_time, num_frames, start_time, start_step) -> None:
        scalars = {f"loss/{k}": float(v) for k, v in losses.components.items()}
        scalars["loss/total"] = float(losses.loss)
        scalars["train/grad_norm"] = grad_norm
        scalars["time/step_s"] = step_time
        scalars["time/data_s"] = data_time
        scalars["train/frames_per_s"] = num_frames / max(step_time + data_time, 1e-9)
        scalars["train/num_boxes"] = losses.normalization.counts.num_boxes
        scalars["train/num_pairs"] = losses.normalization.counts.num_pairs
        scalars["memory/peak_mb"] = _peak_memory_mb(self.device)
        if self.max_bad_samples:
            scalars["data/bad_samples"] = self.bad_samples
        for group in self.optimizer.param_groups:
            scalars[f"lr/{group['name']}"] = group["lr"]
        writer = self._tensorboard()
        if writer is not None:
            for name, value in scalars.items():
                writer.add_scalar(name, value, self.step)
        self._write_stats({"step": self.step, "epoch": self.epoch, **scalars})
        elapsed = time.perf_counter() - start_time
        done = self.step - start_step
        eta = elapsed / max(done, 1) * (self.config.max_steps - self.step)
        logger.info(
            "step %d/%d (%3.0f%%) loss %.4f grad_norm %.3f %.2f s/step %.1f frames/s ETA %s",
            self.step,
            self.config.max_steps,
            100.0 * self.step / max(self.config.max_steps, 1),
            scalars["loss/total"],
            grad_norm,
            step_time,
            scalars["train/frames_per_s"],
            _format_duration(eta),
        )

    def _log_metrics(self, metrics: dict[str, float], prefix: str) -> None:
        if self.rank != 0:
            return
        writer = self._tensorboard()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"{prefix}/{name}", value, self.step)
        self._write_stats({"step": self.step, prefix: metrics})

    def _log_image(self, batch) -> None:
        if self.rank != 0:
            return
        self.model.eval()
        with torch.no_grad():
            image = self.visualize(self.model, batch.to(self.device))
        self.model.train()
        self._tensorboard().add_image("train/predictions", image, self.step)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
