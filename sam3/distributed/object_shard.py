"""Object sharding of the memory tracker over a frame group: each rank propagates some of a session's
objects, and every frame's masks are gathered so every rank yields all objects, in the session's order.

Why objects and not frames: the tracker is recurrent in time (frame t reads the memories of frames
before it), so its frames cannot be split across ranks; its objects can, since a tracked frame runs the
B objects as a batch with no exchange between them. The detector keeps frame sharding
(`sam3.distributed.frame_shard`); the tracker's objects are split over the same frame group, object i
to group rank i mod F.

Objects are coupled in two places, and both stay as in one process:
- Prompted (conditioning) frames are consolidated over all objects (masks made non-overlapping before
  their memory is encoded). Every rank therefore holds the whole session through its prompts and the
  preflight (`ObjectShardedTracker.shard`; a prompt is one heads run) and only then keeps its objects
  (`select_objects`), so conditioning memories are the single-process ones.
- With memory selection, a tracked frame's score (`Tracker.memory_score`) averages over all objects.
  Each frame's object scores and IoUs are gathered with its masks, the score is recomputed on them in the
  session's object order (the same function on the same values as one process) and replaces the local
  one before the frame's outputs are stored per object and before the next frame reads them.

Every other step is per object and the gathers move raw bytes (`PackedLayout`), so one rank reproduces
`VideoTracker.propagate_in_video` bit for bit. With several ranks a tracked frame runs a smaller batch,
and float32 GEMMs of a few rows (object-score and IoU heads, pointer MLP) may round differently with the
row count (gemv for one row): on CPU, about 1e-7 per frame, growing to ~1e-6 relative over 8 frames.
A rank with fewer objects pads its rows; a rank with none still takes part in every gather. Gathers are
synchronous, one per frame: memory selection needs frame t's global score before frame t + 1 is tracked.

The loop is `VideoTracker.propagate_frames` itself; this module only adds the per-frame exchange.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from sam3.distributed.frame_shard import FrameGroup
from sam3.model.tracker import FrameOutput, MemoryBank
from sam3.tracking import TrackedFrame, TrackingState, VideoTracker

logger = logging.getLogger(__name__)


def objects_of_rank(num_objects: int, group_size: int, group_rank: int) -> list[int]:
    """Session object indices group rank `group_rank` propagates (index i mod F == rank)."""
    if not 0 <= group_rank < group_size:
        raise ValueError(f"group rank {group_rank} is outside [0, frame group size {group_size})")
    return list(range(group_rank, num_objects, group_size))


def select_objects(state: TrackingState, obj_indices: Sequence[int]) -> TrackingState:
    """A session holding only some objects of a consolidated `state` (re-indexed 0..k-1 in the given
    order); tensors are shared or sliced, `state` is left as it is.

    Unlike `VideoTracker.remove_object`, tracked frames keep their memory-selection score of the whole
    session (the scores object sharding needs).

    Raises:
        ValueError: an index outside the session or repeated, or prompts not yet consolidated.
    """
    keep = list(obj_indices)
    bad = [i for i in keep if not 0 <= i < state.num_objects]
    if bad or len(set(keep)) != len(keep):
        raise ValueError(
            f"object indices {keep} must be distinct and in [0, {state.num_objects}) (the session's "
            f"{state.num_objects} objects, ids {state.obj_ids}); bad: {bad or 'repeated'}"
        )
    pending = sorted({f for bank in state.temp.values() for f in bank.cond})
    if pending:
        raise ValueError(
            f"prompts on frames {pending} are not consolidated yet: call "
            "VideoTracker.propagate_in_video_preflight(state) first"
        )

    def rows(frames: dict[int, FrameOutput]) -> dict[int, FrameOutput]:
        return {frame_idx: out.select(keep) for frame_idx, out in frames.items()}

    def per_object(table: dict) -> dict:
        return {new: table[old] for new, old in enumerate(keep)}

    return TrackingState(
        num_frames=state.num_frames,
        video_hw=state.video_hw,
        device=state.device,
        storage_device=state.storage_device,
        images=state.images,
        cached_features=state.cached_features,
        obj_ids=[state.obj_ids[i] for i in keep],
        point_inputs={i: dict(frames) for i, frames in per_object(state.point_inputs).items()},
        mask_inputs={i: dict(frames) for i, frames in per_object(state.mask_inputs).items()},
        bank=MemoryBank(rows(state.bank.cond), rows(state.bank.non_cond)),
        per_obj={i: MemoryBank(dict(b.cond), dict(b.non_cond)) for i, b in per_object(state.per_obj).items()},
        temp={i: MemoryBank() for i in range(len(keep))},
        consolidated=set(state.consolidated),
        tracking_has_started=state.tracking_has_started,
        frames_tracked=dict(state.frames_tracked),
        first_ann_frame_idx=state.first_ann_frame_idx,
        memory_pos=state.memory_pos,
    )


@dataclass
class ObjectShard:
    """This rank's part of a session sharded by object.

    Attributes:
        state: the session restricted to this rank's objects; propagation continues in it.
        obj_ids: the whole session's object ids, in the order of the gathered mask rows.
        owned: per group rank, the session object indices it propagates.
        clears_memory: the whole session's choice of forgetting tracked memories around prompted frames.
    """

    state: TrackingState
    obj_ids: list[int]
    owned: list[list[int]]
    clears_memory: bool

    @property
    def num_rows(self) -> int:
        """Rows every rank sends per frame: the largest object count of a rank."""
        return max(len(objects) for objects in self.owned)


class ObjectShardedTracker:
    """Propagates a `VideoTracker` session with its objects spread over a frame group.

    Every rank of the group builds the same session (same frames, same prompts in the same order), then
    calls `shard` and `propagate_in_video` together; each yields every object's masks on every frame, as
    `VideoTracker.propagate_in_video` does in one process. Prompts go to the whole session before `shard`;
    the sharded session only propagates (several calls, forward or reverse).

    Args:
        video_tracker: the session API (its settings and per-frame steps are used as they are).
        group: the ranks sharing the video (`LocalFrameGroup` in one process: nothing travels).
    """

    def __init__(self, video_tracker: VideoTracker, group: FrameGroup) -> None:
        self.video_tracker = video_tracker
        self.group = group

    @torch.inference_mode()
    def shard(self, state: TrackingState) -> ObjectShard:
        """Consolidate the whole session's prompts (every rank), then keep this rank's objects.

        Raises:
            ValueError: the ranks' sessions differ (objects, frames or prompted frames).
        """
        video = self.video_tracker
        video.propagate_in_video_preflight(state)
        if not state.bank.cond:
            raise RuntimeError("no prompts yet: add points, a box or a mask before sharding the session")
        self._check_same_session(state)
        group_size = self.group.group_size
        owned = [objects_of_rank(state.num_objects, group_size, r) for r in range(group_size)]
        mine = owned[self.group.group_rank]
        logger.info(
            "object sharding: %d objects over %d ranks; group rank %d propagates ids %s",
            state.num_objects,
            group_size,
            self.group.group_rank,
            [state.obj_ids[i] for i in mine],
        )
        return ObjectShard(
            state=select_objects(state, mine),
            obj_ids=list(state.obj_ids),
            owned=owned,
            clears_memory=video._clears_memory(state),
        )

    @torch.inference_mode()
    def propagate_in_video(
        self,
        shard: ObjectShard,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[TrackedFrame]:
        """`VideoTracker.propagate_in_video` on this rank's objects; yields every object's masks per frame
        (rows in `shard.obj_ids` order). Every rank of the group must iterate it to the end together."""
        video, state = self.video_tracker, shard.state
        order = video._processing_order(state, start_frame_idx, max_frame_num_to_track, reverse)

        def exchange(frame_idx, out, masks, is_cond):
            scores = None if out is None else out.object_score_logits
            iou = None if out is None else out.iou_score
            all_masks, all_scores, all_iou = self._gather(shard, masks, scores, iou)
            if out is not None and not is_cond and all_iou is not None:
                out.eff_iou_score = video.tracker.memory_score(all_scores, all_iou)  # over the whole session
            return all_masks, all_scores

        yield from video.propagate_frames(
            state, order, reverse=reverse, clears_memory=shard.clears_memory, obj_ids=shard.obj_ids, exchange=exchange
        )

    def _gather(
        self,
        shard: ObjectShard,
        masks: torch.Tensor | None,
        scores: torch.Tensor | None,
        iou: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This rank's (k, 1, h, w) low-res masks, (k, 1) scores and (k,) IoUs (None for k = 0) -> every
        object's, in session order; rows are padded to `shard.num_rows` for the gather."""
        state, tracker = shard.state, self.video_tracker.tracker
        rows, side = shard.num_rows, tracker.low_res_size
        use_iou = tracker.use_memory_selection
        tensors = {
            "masks": torch.zeros(rows, 1, side, side, device=state.device),
            "scores": torch.zeros(rows, 1, device=state.device),
        }
        if use_iou:
            tensors["iou"] = torch.zeros(rows, device=state.device)
        k = state.num_objects
        if k:
            tensors["masks"][:k] = masks
            tensors["scores"][:k] = scores
            if use_iou:
                tensors["iou"][:k] = iou
        buffer = self.group.new_buffer()
        self.group.gather_into(buffer, list(range(self.group.group_size)), tensors, wait=True)
        num_objects = len(shard.obj_ids)
        gathered = {name: t.new_empty(num_objects, *t.shape[1:]) for name, t in tensors.items()}
        for group_rank, objects in enumerate(shard.owned):
            received = buffer.get(group_rank)
            for name, full in gathered.items():
                full[objects] = received[name][: len(objects)]
        return gathered["masks"], gathered["scores"], gathered.get("iou")

    def _check_same_session(self, state: TrackingState) -> None:
        """Every group rank must hold the same session; one small gather compares a summary."""
        summary = torch.tensor(
            [state.num_frames, state.num_objects, hash(tuple(state.obj_ids)), hash(tuple(sorted(state.consolidated)))],
            dtype=torch.int64,
            device=state.device,
        )
        buffer = self.group.new_buffer()
        self.group.gather_into(buffer, list(range(self.group.group_size)), {"summary": summary}, wait=True)
        summaries = [buffer.get(r)["summary"].tolist() for r in range(self.group.group_size)]
        if any(s != summaries[0] for s in summaries):
            raise ValueError(
                "the ranks of the frame group hold different sessions (per group rank: [frames, objects, "
                f"hash of ids, hash of prompted frames] = {summaries}); build the same session, with the same "
                "prompts in the same order, on every rank before sharding"
            )
