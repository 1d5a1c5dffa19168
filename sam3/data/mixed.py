"""Several named datasets in one training run (videos and images alike), sampled by weight.

An epoch of a `MixedDataset` is `epoch_size` clip slots. Slot s of epoch e comes from one member dataset:
member m gets round(epoch_size * w_m / sum(w)) slots (largest remainders settle the rounding), the slots
are shuffled, and member m's k-th slot takes its clip at position k of a per-round permutation of its
clips. A member drawn more often than it has clips starts another round. Each (member, round) loads its
clips with its own random stream (`draw` = round * members + member, see `clip_rng`): a repeat gets other
frames, prompts and augmentation, and clip k of one member is not augmented like clip k of another.
The whole plan is a pure function of (seed, epoch): every rank of a frame group resolves a slot to the
same clip, and `FrameGroupSampler` (which permutes and splits the slots) resumes it exactly.

Clips of different members may differ in length (an image is a one-frame clip, a video clip has T
frames). Nothing is padded or repeated: frame t of a clip belongs to group rank t mod F as for any clip,
so an image's one frame is held by group rank 0 and the other ranks of the group hold nothing of it
(`collate_clips` and the video model handle a clip without local frames). Each returned clip's `clip_id`
is (member name, epoch, slot), so a batch's `clip_ids` say which dataset each clip came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from torch.utils.data import Dataset

from sam3.data.collate import BadClip, ClipSample
from sam3.data.dataset import VideoGroundingDataset
from sam3.data.prompts import PromptConfig
from sam3.data.sampler import ClipKey

# Separates the plan's random stream from the clip streams `clip_rng(seed, epoch, clip)`.
_PLAN_SPAWN_KEY = (1,)


class MixedDataset(Dataset):
    """Named datasets as one, keyed by (epoch, slot); each slot is a clip of one member (module docstring).

    Args:
        datasets: name -> training dataset (`VideoGroundingDataset`, train=True), all built for the same
            frame-group rank, image size and mask setting.
        weights: name -> sampling weight (>= 0, not all 0); a member's share of an epoch is its weight over
            the sum.
        seed: the seed of the plan, the same on every rank.
        epoch_size: clip slots per epoch; None = the members' clips together.
    """

    def __init__(
        self,
        datasets: Mapping[str, VideoGroundingDataset],
        weights: Mapping[str, float],
        *,
        seed: int = 0,
        epoch_size: int | None = None,
    ):
        if not datasets:
            raise ValueError("a mixed dataset needs at least one dataset under `datasets`")
        if set(weights) != set(datasets):
            raise ValueError(f"weights are given for {sorted(weights)} but the datasets are {sorted(datasets)}")
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0 or math.isinf(weight):
                raise ValueError(f"datasets.{name}.weight={weight!r}: expected a finite number >= 0")
        if sum(weights.values()) <= 0:
            raise ValueError(f"every weight is 0 ({dict(weights)}): give at least one dataset a positive weight")
        _check_compatible(datasets)
        self.names = list(datasets)
        self.datasets = dict(datasets)
        self.weights = {name: float(weights[name]) for name in self.names}
        self.seed = seed
        total = sum(len(d) for d in datasets.values())
        self.epoch_size = total if epoch_size is None else int(epoch_size)
        if self.epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        self._cached_plan: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self.epoch_size

    def slot_counts(self) -> dict[str, int]:
        """Slots per epoch of each member: the weights' shares of `epoch_size`, rounded by largest remainder."""
        total = sum(self.weights.values())
        exact = [self.epoch_size * self.weights[name] / total for name in self.names]
        counts = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in by_remainder[: self.epoch_size - sum(counts)]:
            counts[i] += 1
        return dict(zip(self.names, counts, strict=True))

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per slot of `epoch`: member position in `names`, clip index in that member, round; each (S,)
        int64. The last epoch's plan is kept (each DataLoader worker computes its own)."""
        if self._cached_plan is None or self._cached_plan[0] != epoch:
            self._cached_plan = (epoch, self._plan(epoch))
        return self._cached_plan[1]

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch], spawn_key=_PLAN_SPAWN_KEY))
        counts = self.slot_counts()
        member = np.concatenate([np.full(counts[name], m, dtype=np.int64) for m, name in enumerate(self.names)])
        member = member[rng.permutation(self.epoch_size)]  # (S,)
        clip = np.zeros(self.epoch_size, dtype=np.int64)  # (S,)
        round_idx = np.zeros(self.epoch_size, dtype=np.int64)  # (S,)
        for m, name in enumerate(self.names):
            slots = np.flatnonzero(member == m)
            num_clips = len(self.datasets[name])
            num_rounds = -(-len(slots) // num_clips)
            order = np.concatenate([rng.permutation(num_clips) for _ in range(num_rounds)] or [np.zeros(0, np.int64)])
            clip[slots] = order[: len(slots)]
            round_idx[slots] = np.arange(len(slots)) // num_clips
        return member, clip, round_idx

    def source(self, key: ClipKey) -> tuple[str, int, int]:
        """(member name, clip index in the member, round) of slot `key` = (epoch, slot)."""
        epoch, slot = key
        if not 0 <= slot < self.epoch_size:
            raise IndexError(f"slot {slot} out of range for an epoch of {self.epoch_size} clips")
        member, clip, draw = self.plan(epoch)
        return self.names[int(member[slot])], int(clip[slot]), int(draw[slot])

    def __getitem__(self, key: ClipKey) -> ClipSample | BadClip:
        name, clip_idx, round_idx = self.source(key)
        draw = round_idx * len(self.names) + self.names.index(name)
        sample = self.datasets[name].load_clip((key[0], clip_idx), draw=draw)
        clip_id = (name, *key)
        if isinstance(sample, BadClip):
            return replace(sample, clip_id=clip_id)
        sample.clip_id = clip_id
        return sample


def _check_compatible(datasets: Mapping[str, VideoGroundingDataset]) -> None:
    """Members must batch together: training clips, one rank's frames, one image size, masks alike."""
    evaluation = [name for name, d in datasets.items() if not d.train]
    if evaluation:
        raise ValueError(
            f"datasets {evaluation} have train=false: a mixed dataset is for training "
            "(list validation datasets by name under data.val instead)"
        )
    checks = {
        "group_size": lambda d: d.group_size,
        "group_rank": lambda d: d.group_rank,
        "image_size": lambda d: d.transform.image_size,
        "masks (collate cannot batch box-only clips with masked ones)": lambda d: d.load_masks and d.index.has_masks,
    }
    for what, value_of in checks.items():
        if len({value_of(d) for d in datasets.values()}) > 1:
            values = ", ".join(f"{name}: {value_of(d)}" for name, d in datasets.items())
            raise ValueError(f"the mixed datasets differ in {what}: {values}")


def build_mixed_dataset(
    datasets: Mapping[str, Mapping[str, object]],
    *,
    seed: int = 0,
    epoch_size: int | None = None,
    prompts: PromptConfig | None = None,
    negatives_from_all_datasets: bool = False,
) -> MixedDataset:
    """A `MixedDataset` from `{name: {"dataset": VideoGroundingDataset, "weight": w}}` (the config form;
    `sam3.train.entry` builds each member for this rank first).

    Args:
        datasets: per name the built dataset and its weight (default 1.0), or None to leave it out.
        seed: the plan's seed.
        epoch_size: clip slots per epoch; None = the members' clips together.
        prompts: the prompt rules of every member (replacing their own); None = each member's own.
        negatives_from_all_datasets: a member's sampled negatives (`PromptConfig.num_sampled_negatives`)
            come from the phrases of every member, not only its own: phrases of the other datasets,
            absent from the clip's annotations, become negative prompts with no target. Treats them as
            absent from the member's videos, so use it where that holds.
    """
    built, weights = {}, {}
    for name, entry in datasets.items():
        if entry is None:  # NAME=null on the command line leaves a dataset out
            continue
        unknown = set(entry) - {"dataset", "weight"}
        if "dataset" not in entry or unknown:
            raise ValueError(
                f"datasets.{name}: expected the keys 'dataset' (a dataset config) and 'weight' (default 1.0), "
                f"got {sorted(entry)}"
            )
        dataset = entry["dataset"]
        if not isinstance(dataset, VideoGroundingDataset):
            raise TypeError(
                f"datasets.{name}.dataset: expected a dataset (a config with _target_: "
                f"sam3.data.dataset.build_video_dataset), got {type(dataset).__name__}"
            )
        built[name] = dataset
        weights[name] = entry.get("weight", 1.0)
        if prompts is not None:
            dataset.prompts = prompts
    if negatives_from_all_datasets:
        phrases = list(dict.fromkeys(p for dataset in built.values() for p in dataset.index.phrases))
        for dataset in built.values():
            dataset.negative_phrases = phrases
    return MixedDataset(built, weights, seed=seed, epoch_size=epoch_size)
