"""One optimizer step's forward and backward on this rank's frames, normalised over the whole world.

This is the frame-sharding issue's minimal training step, reused by the trainer and the equivalence
tool: count the step's boxes and pairs over every rank and micro-batch (one all-reduce), then for every
micro-batch run the model on the local frames, the criterion with those counts and the scale W, and
backward. DDP
all-reduces (averages) the gradients during the last backward; earlier micro-batches skip that sync.
A rank whose batch holds no (frame, prompt) pair (a clip shorter than the frame group) still runs the
model (the video model substitutes a placeholder frame) and backpropagates a zero-weight loss, so every
rank issues the same collectives. Every loss also carries that zero-weight term over all outputs, so
DDP sees a gradient (possibly zero) for every parameter an output depends on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sam3.distributed.reduce import loss_normalization
from sam3.distributed.row_sparse_grads import register_row_sparse_hook
from sam3.loss.normalization import LossNormalization
from sam3.structures import ClipBatch, DetectorOutput


@dataclass
class StepLosses:
    """What one step's forward/backward produced on this rank.

    Attributes:
        loss: this rank's share of the step objective (W times its pairs' normalised losses), detached.
        components: every loss component summed over the micro-batches, detached.
        normalization: the step's global counts and the scale W used.
        num_pairs: (frame, prompt) pairs this rank computed.
    """

    loss: torch.Tensor
    components: dict[str, torch.Tensor]
    normalization: LossNormalization
    num_pairs: int


def forward_backward(
    model: nn.Module,
    criterion: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    micro_batches: Sequence[ClipBatch],
    step: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> StepLosses:
    """Runs forward and backward over `micro_batches`; gradients are left in `.grad` (averaged by DDP).

    Args:
        model: the video model, optionally wrapped in DistributedDataParallel.
        criterion: `criterion(outputs, targets, normalization, step) -> (loss, components)`.
        micro_batches: this rank's batches of the step (gradient accumulation when more than one).
        step: optimizer step index (seeds per-pair randomness in the criterion).
        device: where the model lives.
        autocast_dtype: e.g. torch.bfloat16 on CUDA; None runs in full precision.
    """
    normalization = loss_normalization(micro_batches, device=device)
    total = torch.zeros((), device=device)
    components: dict[str, torch.Tensor] = {}
    num_pairs = 0
    for i, batch in enumerate(micro_batches):
        is_last = i == len(micro_batches) - 1
        defer_sync = isinstance(model, DistributedDataParallel) and not is_last
        sync = model.no_sync() if defer_sync else contextlib.nullcontext()
        batch = batch.to(device, non_blocking=True)
        with sync:
            with _autocast(device, autocast_dtype):
                outputs = model(batch)
            loss = zero_weight_loss(outputs)
            parts: dict[str, torch.Tensor] = {}
            if batch.num_pairs > 0:
                pair_loss, parts = criterion(_float32(outputs), batch.targets, normalization, step=step)
                loss = loss + pair_loss
            loss.backward()
        total += loss.detach()
        num_pairs += batch.num_pairs
        for name, value in parts.items():
            components[name] = components.get(name, 0) + value.detach()
    return StepLosses(loss=total, components=components, normalization=normalization, num_pairs=num_pairs)


def wrap_ddp(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = True) -> nn.Module:
    """`model` in DistributedDataParallel as the training step expects it (call with a process group).

    Gradients are views into DDP's all-reduce buckets (`gradient_as_bucket_view`): backward writes each
    gradient straight into its bucket, and the averaged bucket is the gradient, without a second
    gradient-sized copy each way. Parameters unused on every rank keep no gradient (None), as without it.
    A trained token embedding's gradient is reduced row-sparse (`sam3.distributed.row_sparse_grads`):
    only the rows of the step's tokens travel, and the result is the dense average. Buffers are
    broadcast from rank 0 at set-up, and before every forward only when a module keeps running
    statistics (BatchNorm): SAM3's buffers are constants (RoPE tables, a fixed Gaussian matrix),
    identical on every rank, and the broadcast would be one more collective, and wait, per step.

    Args:
        model: the video model, on `device`.
        device: a CUDA device gets `device_ids=[index]`; a CPU model none.
        find_unused_parameters: some parameters get no gradient (the released layout's tracker).
    """
    device_ids = [device.index] if device.type == "cuda" else None
    has_running_stats = any(getattr(module, "track_running_stats", False) for module in model.modules())
    ddp = DistributedDataParallel(
        model,
        device_ids=device_ids,
        forward_sync_buffers=has_running_stats,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
    )
    register_row_sparse_hook(ddp)
    return ddp


def zero_weight_loss(outputs: DetectorOutput) -> torch.Tensor:
    """A loss of exactly 0 that touches every floating-point output tensor.

    Added to every step's loss: DDP (with find_unused_parameters) marks as unused only parameters that
    no output reaches, and waits for every other parameter's gradient; an output the criterion ignores
    (e.g. `semantic_seg`) would otherwise leave its parameters pending and the gradients unsynchronised.
    On a rank without frames it is the whole loss, so the rank joins the gradient all-reduce.
    """
    tensors = [t for t in _output_tensors(outputs) if t.is_floating_point() and t.requires_grad]
    zero = torch.zeros((), device=outputs.pred_logits.device)
    return sum((t.sum() * 0.0 for t in tensors), zero)


def _output_tensors(outputs: DetectorOutput) -> list[torch.Tensor]:
    found = []
    for f in fields(outputs):
        value = getattr(outputs, f.name)
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, DetectorOutput):
            found += _output_tensors(value)
        elif isinstance(value, list):
            for item in value:
                found += _output_tensors(item)
    return found


def _float32(outputs: DetectorOutput) -> DetectorOutput:
    """Losses run in fp32 even when the forward ran under bf16 autocast."""
    if outputs.pred_logits.dtype == torch.float32:
        return outputs
    return _cast(outputs)


def _cast(outputs: DetectorOutput) -> DetectorOutput:
    changes = {}
    for f in fields(outputs):
        value = getattr(outputs, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            changes[f.name] = value.float()
        elif isinstance(value, DetectorOutput):
            changes[f.name] = _cast(value)
        elif isinstance(value, list):
            changes[f.name] = [_cast(v) for v in value]
    return replace(outputs, **changes)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
