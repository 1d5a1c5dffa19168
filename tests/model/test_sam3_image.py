"""Sam3Image on the tiny preset: outputs over (frame, prompt) pairs, gradients, determinism, input
sizes, builder flags and checkpoints; the full preset against the official manifest (meta device).
"""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from sam3.model.geometry_encoder import GeometryPrompts
from sam3.model.sam3_image import Sam3Image
from sam3.model_builder import apply_runtime_policy, model_config
from sam3.structures import ClipBatch, DetectorOutput, FrameMeta, PairIndex
from sam3.tools.seeded_init import read_manifest

TINY_QUERIES = 16
# Parameters the image forward never uses (reference README): the neck's 0.5x level, CLIP's pooled
# text projection, the pixel decoder's third stage, (without a semantic loss) the semantic head, and the
# interactive heads with their pyramid (`sam3.interactive` uses them, not the grounding forward).
NEVER_USED = (
    "backbone.vision_backbone.sam2_convs.",
    "tracker.",
    "backbone.vision_backbone.convs.3.",
    "backbone.language_backbone.encoder.text_projection",
    "segmentation_head.pixel_decoder.conv_layers.2.",
    "segmentation_head.pixel_decoder.norms.2.",
    "segmentation_head.semantic_seg_head.",
)


def build_tiny(**overrides) -> Sam3Image:
    torch.manual_seed(0)
    return instantiate(model_config("tiny"), **overrides)


@pytest.fixture(scope="module")
def tiny() -> Sam3Image:
    return build_tiny()


def make_batch(prompts: list[list[str]], frames_per_clip: int = 2, size: int = 224, seed: int = 0) -> ClipBatch:
    g = torch.Generator().manual_seed(seed)
    texts, clip_text_idx = ClipBatch.dedup_texts(prompts)
    frame_clip_idx = torch.arange(len(prompts)).repeat_interleave(frames_per_clip)
    frame_indices = torch.arange(frames_per_clip).repeat(len(prompts))
    num_frames = len(frame_indices)
    return ClipBatch(
        images=torch.rand(num_frames, 3, size, size, generator=g) * 2 - 1,
        frame_clip_idx=frame_clip_idx,
        frame_indices=frame_indices,
        num_frames=torch.full((len(prompts),), frames_per_clip),
        prompts=prompts,
        texts=texts,
        pairs=PairIndex.frame_major(frame_clip_idx, frame_indices, clip_text_idx),
        meta=FrameMeta(video_ids=list(range(num_frames)), orig_sizes=torch.full((num_frames, 2), size)),
    )


def box_prompts(num_pairs: int) -> GeometryPrompts:
    boxes = torch.tensor([[0.45, 0.5, 0.4, 0.4], [0.76, 0.18, 0.26, 0.16]]).expand(num_pairs, -1, -1)
    labels = torch.tensor([True, False]).expand(num_pairs, -1)
    padding = torch.zeros(num_pairs, 2, dtype=torch.bool)
    padding[::2, 1] = True  # every other pair has a single box
    return GeometryPrompts(boxes.clone(), labels.clone(), padding)


def check_output(out: DetectorOutput, num_pairs: int, mask_size: int, training: bool) -> None:
    q = TINY_QUERIES
    assert out.pred_logits.shape == (num_pairs, q, 1)
    assert out.pred_boxes.shape == (num_pairs, q, 4) and out.pred_boxes_xyxy.shape == (num_pairs, q, 4)
    assert out.presence_logit_dec.shape == (num_pairs, 1)
    assert out.pred_masks.shape == (num_pairs, q, mask_size, mask_size)
    assert out.semantic_seg.shape == (num_pairs, 1, mask_size, mask_size)
    assert out.queries.shape == (num_pairs, q, 64)
    assert ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    xyxy = out.pred_boxes_xyxy
    torch.testing.assert_close((xyxy[..., :2] + xyxy[..., 2:]) / 2, out.pred_boxes[..., :2])
    assert out.pred_logits.abs().max() <= 12.0
    assert len(out.aux_outputs) == 1  # tiny decoder: 2 layers
    aux = out.aux_outputs[0]
    assert aux.pred_logits.shape == (num_pairs, q, 1) and aux.presence_logit_dec.shape == (num_pairs, 1)
    if training:
        assert out.o2m is not None
        assert out.o2m.pred_logits.shape == (num_pairs, q, 1)
        assert out.o2m.pred_masks.shape == (num_pairs, q, mask_size, mask_size)
        assert len(out.o2m.aux_outputs) == 1
    else:
        assert out.o2m is None
    for t in (out.pred_logits, out.pred_boxes, out.pred_masks, out.presence_logit_dec):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("num_prompts", [1, 3])
@pytest.mark.parametrize("with_boxes", [False, True])
def test_output_shapes_over_pairs(tiny, num_prompts, with_boxes):
    prompts = [["red circle", "blue square", "a dog"][:num_prompts]]
    batch = make_batch(prompts)
    tiny.eval()
    with torch.no_grad():
        out = tiny(batch, box_prompts(batch.num_pairs) if with_boxes else None)
    check_output(out, 2 * num_prompts, 64, training=False)


def test_training_outputs_and_gradients_reach_every_used_parameter():
    model = build_tiny().train()
    batch = make_batch([["red circle", "blue square"], ["red circle"]])
    geometry = box_prompts(batch.num_pairs)
    geometry.points_xy = torch.tensor([[[0.2, 0.3]]]).expand(batch.num_pairs, -1, -1).clone()
    geometry.point_labels = torch.ones(batch.num_pairs, 1, dtype=torch.bool)
    geometry.point_labels[0] = False
    geometry.point_padding = torch.zeros(batch.num_pairs, 1, dtype=torch.bool)
    out = model(batch, geometry)
    check_output(out, batch.num_pairs, 64, training=True)
    loss = 0.0
    for o in (out, out.o2m, *out.aux_outputs):
        loss = loss + o.pred_logits.mean() + o.pred_boxes.mean() + o.presence_logit_dec.mean()
    loss = loss + out.pred_masks.mean()
    loss.backward()
    without = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert without == sorted(n for n, _ in model.named_parameters() if n.startswith(NEVER_USED))
    assert len(without) >= 5
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_pairs_are_independent_of_batching(tiny):
    tiny.eval()
    batch = make_batch([["red circle", "blue square", "a dog"]], frames_per_clip=2)
    with torch.no_grad():
        vision = tiny.backbone.forward_image(batch.images)
        text = tiny.backbone.forward_text(batch.texts)
        together = tiny.forward_grounding(vision, text, batch.pairs.frame_slot, batch.pairs.text_idx)
        pair = 4  # frame 1, prompt 1
        one = slice(pair, pair + 1)
        alone = tiny.forward_grounding(vision, text, batch.pairs.frame_slot[one], batch.pairs.text_idx[one])
    torch.testing.assert_close(together.pred_logits[one], alone.pred_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.pred_masks[one], alone.pred_masks, atol=1e-4, rtol=1e-4)
    # pairs of different prompts (and of different frames) differ
    assert not torch.allclose(together.queries[3], together.queries[4], atol=1e-4)
    assert not torch.allclose(together.queries[1], together.queries[4], atol=1e-4)


def test_text_encoder_runs_once_per_batch(tiny, monkeypatch):
    calls = []
    original = tiny.backbone.forward_text
    monkeypatch.setattr(tiny.backbone, "forward_text", lambda texts: calls.append(list(texts)) or original(texts))
    batch = make_batch([["red circle", "a dog"], ["a dog"]], frames_per_clip=3)
    tiny.eval()
    with torch.no_grad():
        out = tiny(batch)
    assert calls == [["red circle", "a dog"]]
    assert out.num_pairs == 9


def test_eval_mode_is_deterministic(tiny):
    tiny.eval()
    batch = make_batch([["red circle"]])
    with torch.no_grad():
        first, second = tiny(batch, box_prompts(2)), tiny(batch, box_prompts(2))
    for name in ("pred_logits", "pred_boxes", "presence_logit_dec", "pred_masks"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_other_input_size(tiny):
    tiny.eval()
    batch = make_batch([["red circle", "a dog"]], frames_per_clip=1, size=280)
    with torch.no_grad():
        out = tiny(batch, box_prompts(2))
    check_output(out, 2, 80, training=False)


def test_builder_without_segmentation_and_checkpoint_round_trip(tmp_path, tiny):
    path = tmp_path / "tiny.pt"
    torch.save({"model": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, path)
    loaded = build_tiny(checkpoint_path=str(path)).eval()
    assert not loaded.training
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    no_seg = build_tiny(checkpoint_path=str(path), enable_segmentation=False).eval()
    assert no_seg.segmentation_head is None
    with torch.no_grad():
        out = no_seg(make_batch([["red circle"]]))
    assert out.pred_masks is None and out.semantic_seg is None
    broken = {k: v for k, v in tiny.state_dict().items() if not k.startswith("transformer.decoder.norm.")}
    torch.save(broken, path)
    with pytest.raises(InstantiationException, match="2 missing: transformer.decoder.norm.weight"):
        build_tiny(checkpoint_path=str(path))


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        model = apply_runtime_policy(build_tiny(), act_checkpoint=flag).train()
        for m in model.modules():  # equality needs no dropout / drop-path randomness
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if isinstance(m, torch.nn.MultiheadAttention):
                m.dropout = 0.0
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
        torch.manual_seed(0)
        out = model(make_batch([["red circle"]], frames_per_clip=1), box_prompts(1))
        (out.pred_logits.mean() + out.pred_boxes.mean() + out.pred_masks.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("with_tracker", [False, True])
def test_full_preset_has_exactly_the_official_keys(reference_dir, with_tracker):
    overrides = [] if with_tracker else ["tracker=null", "backbone.vision_backbone.use_sam2_convs=false"]
    with torch.device("meta"):
        model = instantiate(model_config("sam3", overrides))
    manifest = {k: (shape, dtype) for k, shape, dtype in read_manifest(reference_dir / "sam3_image_state_dict.tsv")}
    if with_tracker:  # plus the released tracker and its pyramid, under their released names
        layout = read_manifest(reference_dir / "sam3_checkpoint_layout_state_dict.tsv")
        manifest.update(
            {k.removeprefix("detector."): (shape, dtype) for k, shape, dtype in layout if "sam2_convs" in k}
        )
        manifest.update({k: (shape, dtype) for k, shape, dtype in layout if k.startswith("tracker.")})
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert {k: v for k, v in ours.items() if manifest[k] != v} == {}
    if not with_tracker:
        assert sum(p.numel() for p in model.parameters()) == 840_509_750
