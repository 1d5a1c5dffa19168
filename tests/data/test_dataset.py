"""Dataset and collate: ranks of a frame group agree on clip and augmentation; batches match the contract."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from sam3.data.collate import ClipSample, collate_clips
from sam3.data.dataset import ClipSamplingConfig, VideoGroundingDataset, build_video_dataset
from sam3.data.prompts import PromptConfig
from sam3.data.readers import load_annotations
from sam3.data.sampler import FrameGroupSampler
from sam3.data.transforms import AugmentConfig, ClipTransform
from sam3.ops.boxes import box_cxcywh_to_xyxy
from sam3.ops.masks import masks_to_boxes_xyxy
from sam3.structures import ClipBatch, PairIndex

AUGMENT = AugmentConfig(hflip_prob=0.5, crop_prob=0.7)
SAMPLING = ClipSamplingConfig(num_frames=5, stride_range=(1, 2), reverse_prob=0.5, clips_per_video=2)


def _dataset(shapes_dir, group_size=1, group_rank=0, train=True, **kwargs) -> VideoGroundingDataset:
    index = load_annotations(shapes_dir / "train" / "annotations.json")
    transform = ClipTransform(48, augment=kwargs.pop("augment", AUGMENT) if train else None)
    return VideoGroundingDataset(
        index,
        transform=transform,
        train=train,
        clip_sampling=kwargs.pop("clip_sampling", SAMPLING),
        group_size=group_size,
        group_rank=group_rank,
        seed=7,
        **kwargs,
    )


def test_two_ranks_of_a_group_get_the_same_clip_and_augmentation(shapes_dir):
    whole = _dataset(shapes_dir)
    ranks = [_dataset(shapes_dir, group_size=2, group_rank=r) for r in range(2)]
    assert len(whole) == 12
    again = _dataset(shapes_dir)  # a fresh instance (another process) draws the same
    plain = _dataset(shapes_dir, augment=None)
    augmented = 0
    for key in [(0, 0), (0, 5), (1, 5), (3, 11), (2, 7)]:
        reference = whole[key]
        parts = [ds[key] for ds in ranks]
        assert reference.num_frames == 5
        for rank, part in enumerate(parts):
            own = part.frame_indices
            assert own.tolist() == list(range(rank, 5, 2))
            assert part.num_frames == reference.num_frames and part.prompts == reference.prompts
            assert part.prompt_instances == reference.prompt_instances
            assert part.is_positive == reference.is_positive and part.is_exhaustive == reference.is_exhaustive
            # Same frames, same crop / flip / colour: the pixels and targets are identical.
            assert torch.equal(part.images, reference.images[own])
            assert torch.equal(part.boxes_cxcywh, reference.boxes_cxcywh[own])
            assert torch.equal(part.is_visible, reference.is_visible[own])
            assert torch.equal(part.masks, reference.masks[own])
        assert torch.equal(again[key].images, reference.images)
        augmented += not torch.equal(plain[key].images, reference.images)
    assert augmented > 0
    # Different epochs of one clip index draw different clips.
    assert not torch.equal(whole[(0, 3)].images, whole[(1, 3)].images)


def test_rank_without_frames_gets_a_valid_empty_batch(shapes_dir):
    short = ClipSamplingConfig(num_frames=2)
    dataset = _dataset(shapes_dir, group_size=4, group_rank=3, clip_sampling=short)
    batch = collate_clips([dataset[(0, 0)], dataset[(0, 1)]])
    assert batch.images.shape == (0, 3, 48, 48)
    assert batch.num_frames.tolist() == [2, 2] and batch.num_local_frames == 0 and batch.num_pairs == 0
    assert all(batch.prompts) and batch.texts
    targets = batch.targets
    assert targets.boxes_padded.shape[0] == 0 and len(targets.masks) == 0 and targets.total_boxes == 0
    # A rank holding one of the two frames.
    other = _dataset(shapes_dir, group_size=4, group_rank=1, clip_sampling=short)
    mixed = collate_clips([other[(0, 0)], dataset[(0, 1)]])
    assert mixed.frame_indices.tolist() == [1] and mixed.frame_clip_idx.tolist() == [0]
    assert mixed.num_pairs == len(mixed.prompts[0])


def test_collate_matches_the_pair_contract(shapes_dir):
    dataset = _dataset(shapes_dir, group_size=2, group_rank=0, prompts=PromptConfig(max_prompts=6, max_masklets=8))
    samples = [dataset[(0, i)] for i in (0, 3, 8)]
    batch = collate_clips(samples)
    assert isinstance(batch, ClipBatch)
    num_local = [len(s.frame_indices) for s in samples]
    assert batch.images.shape == (sum(num_local), 3, 48, 48)
    assert batch.frame_clip_idx.tolist() == [c for c, n in enumerate(num_local) for _ in range(n)]
    texts, text_idx = ClipBatch.dedup_texts(batch.prompts)
    assert batch.texts == texts and len(set(texts)) == len(texts)
    expected = PairIndex.frame_major(batch.frame_clip_idx, batch.frame_indices, text_idx)
    assert torch.equal(batch.pairs.text_idx, expected.text_idx)
    assert torch.equal(batch.pairs.frame_idx, expected.frame_idx)
    assert batch.num_pairs == sum(n * len(s.prompts) for n, s in zip(num_local, samples, strict=True))
    assert all(len(p) <= 6 for p in batch.prompts)
    targets = batch.targets
    assert targets.pairs is batch.pairs and len(targets.masks) == targets.total_boxes
    for pair in range(batch.num_pairs):
        index = batch.pairs
        clip, slot, prompt = (int(x[pair]) for x in (index.clip_idx, index.frame_slot, index.prompt_idx))
        sample = samples[clip]
        local = slot - sum(num_local[:clip])
        inst = sample.prompt_instances[prompt]
        n = len(inst)
        assert targets.num_instances[pair] == n and (targets.object_ids_padded[pair, :n] >= 0).all()
        assert (targets.object_ids_padded[pair, n:] == -1).all() and not targets.is_visible_padded[pair, n:].any()
        assert targets.is_positive[pair] == sample.is_positive[prompt] == (n > 0)
        assert targets.num_boxes[pair] == sample.is_visible[local, inst].sum()
        vis = targets.is_visible_padded[pair]
        # Placeholders: zero box, no mask; visible boxes are the boxes of their masks (within 1 px).
        assert (targets.boxes_padded[pair][~vis] == 0).all()
        boxes = box_cxcywh_to_xyxy(targets.boxes_padded[pair][vis]) * 48
        masks = targets.masks.unpack(targets.mask_rows(torch.full((int(vis.sum()),), pair), vis.nonzero()[:, 0]))
        assert torch.equal(masks, sample.masks[local, torch.tensor(inst, dtype=torch.int64)[vis[:n]]])
        assert ((masks_to_boxes_xyxy(masks) - boxes).abs() <= 1.0 + 1e-4).all()
    # An instance keeps its slot and id on every frame of its clip.
    clip0 = (batch.pairs.clip_idx == 0) & (batch.pairs.prompt_idx == 0)
    ids = targets.object_ids_padded[clip0]
    assert (ids == ids[0]).all()
    assert 0 < targets.total_boxes == int(targets.is_visible_padded.sum())
    assert batch.meta.orig_sizes.tolist() == [[64, 64]] * sum(num_local)
    assert len(batch.meta.file_names) == sum(num_local)
    assert batch.clip_ids == [(0, 0), (0, 3), (0, 8)]


def test_eval_yields_whole_videos_split_over_ranks(shapes_dir):
    whole = _dataset(shapes_dir, train=False)
    assert len(whole) == 6
    sample = whole[(0, 2)]
    assert sample.num_frames == 6 and sample.frame_indices.tolist() == list(range(6))
    assert sample.file_names == [f"video_00002/{t:05d}.jpg" for t in range(6)]
    index = whole.index
    assert sample.prompts == [p.phrase for p in index.pairs[2] if p.num_masklets] + [
        p.phrase for p in index.pairs[2] if not p.num_masklets
    ]
    half = _dataset(shapes_dir, train=False, group_size=2, group_rank=1)[(0, 2)]
    assert half.frame_indices.tolist() == [1, 3, 5] and torch.equal(half.images, sample.images[1::2])
    boxes_only = collate_clips([_dataset(shapes_dir, train=False, load_masks=False)[(0, 2)]])
    assert boxes_only.targets.masks is None
    assert torch.equal(boxes_only.targets.boxes_padded, collate_clips([sample]).targets.boxes_padded)


def test_dataloader_workers_give_the_same_batches(shapes_dir):
    dataset = build_video_dataset(
        shapes_dir / "train" / "annotations.json", image_size=32, augment=AUGMENT, clip_sampling=SAMPLING, seed=1
    )
    batches = []
    for workers in (0, 2):
        sampler = FrameGroupSampler(len(dataset), num_groups=2, group_idx=1, seed=4)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate_clips)
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) == 3
    for a, b in zip(*batches, strict=True):
        assert a.clip_ids == b.clip_ids and a.prompts == b.prompts
        assert torch.equal(a.images, b.images) and torch.equal(a.targets.masks.bits, b.targets.masks.bits)


def _sample(num_local: int, prompt_instances: list[list[int]], num_inst: int, clip_id: int) -> ClipSample:
    visible = torch.ones(num_local, num_inst, dtype=torch.bool)
    visible[0, :1] = False  # instance 0 hidden on the first local frame
    return ClipSample(
        images=torch.zeros(num_local, 3, 8, 8),
        frame_indices=torch.arange(num_local) * 2,
        num_frames=2 * num_local,
        prompts=[f"p{i}" for i in range(len(prompt_instances))],
        prompt_instances=prompt_instances,
        is_exhaustive=[True] * len(prompt_instances),
        is_positive=[bool(inst) for inst in prompt_instances],
        boxes_cxcywh=torch.rand(num_local, num_inst, 4) * visible[..., None],
        is_visible=visible,
        masks=torch.ones(num_local, num_inst, 8, 8, dtype=torch.bool) & visible[..., None, None],
        video_id=clip_id,
        orig_size=(8, 8),
        file_names=[f"{clip_id}/{t}.jpg" for t in range(num_local)],
        clip_id=clip_id,
    )


def test_collate_clip_without_instances_beside_one_with():
    with_inst = _sample(2, [[0, 2], [], [1]], num_inst=3, clip_id=0)
    negatives_only = _sample(1, [[], []], num_inst=0, clip_id=1)
    batch = collate_clips([with_inst, negatives_only])
    targets = batch.targets
    assert batch.num_pairs == 2 * 3 + 1 * 2 and targets.boxes_padded.shape == (8, 2, 4)
    assert targets.num_instances.tolist() == [2, 0, 1, 2, 0, 1, 0, 0]
    assert targets.object_ids_padded[:3].tolist() == [[0, 2], [-1, -1], [1, -1]]
    assert targets.is_visible_padded[:, 0].tolist() == [False, False, True, True, False, True, False, False]
    assert targets.num_boxes.tolist() == [1, 0, 1, 2, 0, 1, 0, 0]
    assert torch.equal(targets.boxes_padded[3, 1], with_inst.boxes_cxcywh[1, 2])
    # Masks of visible slots only, pair then slot order: (pair 0, slot 1), (2, 0), (3, 0), (3, 1), (5, 0).
    assert len(targets.masks) == 5 and targets.packed_masks.all()
    assert targets.is_positive.tolist() == [True, False, True, True, False, True, False, False]
    assert (targets.object_ids_padded[6:] == -1).all()


def test_collate_batch_whose_prompts_are_all_negatives():
    """No instance anywhere in the batch (Nmax = 0): every pair is a negative with empty targets."""
    batch = collate_clips([_sample(2, [[], [], []], num_inst=0, clip_id=0), _sample(1, [[]], num_inst=0, clip_id=1)])
    targets = batch.targets
    assert batch.num_pairs == 2 * 3 + 1
    assert targets.boxes_padded.shape == (7, 0, 4) and targets.is_visible_padded.shape == (7, 0)
    assert len(targets.masks) == 0
    assert targets.num_boxes.tolist() == [0] * 7 and not targets.is_positive.any()
