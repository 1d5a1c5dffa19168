"""Core structures: frame-major pair enumeration, packed views of padded targets, `.to(device)`."""

import subprocess
import sys

import pytest
import torch

from sam3.structures import BitMasks, ClipBatch, DetectorOutput, FrameMeta, PairIndex, PairTargets, _pack_bits_tensor


def _batch() -> ClipBatch:
    prompts = [["red circle", "square"], ["square", "blue shape", "triangle"]]
    texts, clip_text_idx = ClipBatch.dedup_texts(prompts)
    frame_clip_idx = torch.tensor([0, 0, 1])
    frame_indices = torch.tensor([1, 3, 0])
    pairs = PairIndex.frame_major(frame_clip_idx, frame_indices, clip_text_idx)
    num_pairs = len(pairs)
    boxes = torch.zeros(num_pairs, 2, 4)
    visible = torch.zeros(num_pairs, 2, dtype=torch.bool)
    visible[0, 0] = visible[0, 1] = visible[4, 1] = True
    boxes[0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    boxes[0, 1] = torch.tensor([0.3, 0.3, 0.1, 0.1])
    boxes[4, 1] = torch.tensor([0.7, 0.7, 0.1, 0.2])
    targets = PairTargets(
        pairs=pairs,
        boxes_padded=boxes,
        is_visible_padded=visible,
        object_ids_padded=torch.tensor([[0, 1]] * num_pairs),
        num_boxes=visible.sum(1),
        num_instances=torch.full((num_pairs,), 2),
        is_exhaustive=torch.ones(num_pairs, dtype=torch.bool),
        is_positive=torch.ones(num_pairs, dtype=torch.bool),
        masks=BitMasks.pack(torch.zeros(3, 8, 8, dtype=torch.bool)),
    )
    return ClipBatch(
        images=torch.zeros(3, 3, 8, 8),
        frame_clip_idx=frame_clip_idx,
        frame_indices=frame_indices,
        num_frames=torch.tensor([4, 2]),
        prompts=prompts,
        texts=texts,
        pairs=pairs,
        meta=FrameMeta(video_ids=["a", "a", "b"], orig_sizes=torch.tensor([[480, 640]] * 3)),
        targets=targets,
    )


def test_texts_are_deduplicated_in_first_seen_order():
    batch = _batch()
    assert batch.texts == ["red circle", "square", "blue shape", "triangle"]


def test_pairs_are_frame_major():
    pairs = _batch().pairs
    # frame slot 0 and 1 (clip 0, two prompts each), frame slot 2 (clip 1, three prompts)
    assert pairs.frame_slot.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert pairs.clip_idx.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert pairs.frame_idx.tolist() == [1, 1, 3, 3, 0, 0, 0]
    assert pairs.prompt_idx.tolist() == [0, 1, 0, 1, 0, 1, 2]
    assert pairs.text_idx.tolist() == [0, 1, 0, 1, 1, 2, 3]


def test_packed_views_follow_pair_then_slot_order():
    targets = _batch().targets
    assert targets.total_boxes == 3
    assert targets.packed_pair_idx.tolist() == [0, 0, 4]
    torch.testing.assert_close(targets.packed_boxes[2], torch.tensor([0.7, 0.7, 0.1, 0.2]))
    assert targets.packed_object_ids.tolist() == [0, 1, 1]
    assert targets.packed_masks.shape == (3, 8, 8)


def test_to_moves_every_tensor_including_nested_outputs():
    batch = _batch().to("meta")
    assert batch.images.device.type == "meta"
    assert batch.targets.boxes_padded.device.type == "meta"
    assert batch.pairs.frame_idx.device.type == "meta"
    assert batch.meta.orig_sizes.device.type == "meta"
    assert batch.prompts[1][2] == "triangle"
    out = DetectorOutput(
        pred_logits=torch.zeros(2, 5, 1),
        pred_boxes=torch.zeros(2, 5, 4),
        pred_boxes_xyxy=torch.zeros(2, 5, 4),
        presence_logit_dec=torch.zeros(2, 1),
        aux_outputs=[DetectorOutput(torch.zeros(2, 5, 1), torch.zeros(2, 5, 4), torch.zeros(2, 5, 4))],
    )
    moved = out.to("meta")
    assert moved.aux_outputs[0].pred_boxes.device.type == "meta"
    assert out.scores().shape == (2, 5)
    torch.testing.assert_close(out.scores(), torch.full((2, 5), 0.25))


@pytest.mark.parametrize("shape", [(3, 9, 13), (0, 8, 8), (2, 1, 1), (4, 16, 24)])
def test_bit_masks_round_trip_and_both_packers_agree(shape):
    masks = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = BitMasks.pack(masks)
    assert packed.bits.dtype == torch.uint8 and packed.bits.shape == (shape[0], -(-shape[1] * shape[2] // 8))
    assert torch.equal(packed.unpack(), masks)
    assert torch.equal(_pack_bits_tensor(masks.reshape(shape[0], shape[1] * shape[2])), packed.bits)  # the non-CPU path
    if shape[0] > 1:
        assert torch.equal(packed.unpack(torch.tensor([1, 0])), masks[[1, 0]])


def test_mask_rows_index_the_packed_visible_masks():
    targets = _batch().targets
    assert targets.mask_rows(torch.tensor([4, 0, 0]), torch.tensor([1, 1, 0])).tolist() == [2, 1, 0]


def test_import_is_light():
    code = (
        "import sys, sam3, sam3.structures, sam3.ops.boxes, sam3.ops.masks, sam3.distributed.env;"
        "heavy = [m for m in ('hydra', 'submitit', 'scipy', 'tensorboard', 'open_clip', 'sam3.model') if m in sys.modules];"
        "import torch; assert not torch.cuda.is_initialized(), 'CUDA initialised at import';"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    bare = "import sys, sam3; assert 'torch' not in sys.modules, 'import sam3 pulled in torch'"
    subprocess.run([sys.executable, "-c", bare], check=True)
