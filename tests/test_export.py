"""`sam3.export`: the exported program equals the eager model at batch and prompt counts other than the
export's example, after a save / load in a process without `sam3`, and as an AOTInductor package.

The tiny preset at 56 px (a 4x4 token grid, smaller than the 8x8 windows: the window-padding path is
traced) is exported once per module for text prompts and once for text + box prompts.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sam3.export import ExportableSam3, compile_aoti, example_inputs, export_model, max_abs_diff
from sam3.model_builder import build_model
from tests.helpers import REFERENCE_DIR

IMAGE_SIZE = 56
PROMPTS = ("cat", "a red car", "dog", "the small blue boat")
GRID = [(1, 1), (1, 2), (3, 2), (2, 4)]  # (images B, prompts P); the export example is (2, 2)
FP32_TOL = 1e-5
AOTI_TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def programs(model):
    """{num_boxes: ExportedProgram} for text prompts (0) and text + box prompts (3)."""
    return {k: export_model(model, example_inputs(model, image_size=IMAGE_SIZE, num_boxes=k)) for k in (0, 3)}


def _inputs(model, num_images: int, num_prompts: int, with_boxes: bool):
    """A check batch; with boxes, K = 1..3 boxes per prompt varies with (B, P)."""
    num_boxes = 1 + (num_images + num_prompts) % 3 if with_boxes else 0
    return example_inputs(
        model,
        image_size=IMAGE_SIZE,
        num_images=num_images,
        prompts=PROMPTS[:num_prompts],
        num_boxes=num_boxes,
        seed=10 * num_images + num_prompts,
    )


@pytest.mark.parametrize("with_boxes", [False, True], ids=["text", "text_boxes"])
@pytest.mark.parametrize(("num_images", "num_prompts"), GRID)
def test_exported_equals_eager(model, programs, num_images, num_prompts, with_boxes):
    check = _inputs(model, num_images, num_prompts, with_boxes)
    with torch.no_grad():
        got = programs[3 if with_boxes else 0].module()(*check.as_args())
        expected = ExportableSam3(model)(*check.as_args())
    num_pairs = num_images * num_prompts
    num_queries = model.transformer["decoder"].num_queries
    assert got[0].shape == (num_pairs, num_queries, 1)
    assert got[4].shape == (num_pairs, num_queries)
    diffs = max_abs_diff(got, expected)
    assert max(diffs.values()) <= FP32_TOL, diffs


def test_an_example_of_size_one_is_refused(model):
    with pytest.raises(ValueError, match="at least 2"):
        export_model(model, example_inputs(model, image_size=IMAGE_SIZE, num_images=1))


def test_rows_are_image_major(model):
    """Row b*P + p of a (B, P) call is image b with prompt p, as a (1, 1) call gives it."""
    check = _inputs(model, 2, 3, with_boxes=True)
    wrapper = ExportableSam3(model)
    with torch.no_grad():
        batched = wrapper(*check.as_args())
        single = wrapper(check.images[1:2], check.token_ids[2:3], *(t[2:3] for t in check.as_args()[2:]))
    for many, one in zip(batched, single, strict=True):
        torch.testing.assert_close(many[1 * 3 + 2], one[0], atol=1e-5, rtol=0)


def test_round_trip_in_a_process_without_sam3(model, programs, tmp_path):
    """Text artifact with torch alone; the box artifact needs `import torchvision` (its roi_align op).
    The README's token ids (open_clip's tokenizer, no sam3) are ours."""
    checks = {0: _inputs(model, 3, 2, with_boxes=False), 3: _inputs(model, 3, 2, with_boxes=True)}
    for num_boxes, check in checks.items():
        torch.export.save(programs[num_boxes], tmp_path / f"model{num_boxes}.pt2")
        torch.save(list(check.as_args()), tmp_path / f"inputs{num_boxes}.pt")
    script = (
        "import sys, torch\n"
        "def run(name):\n"
        "    program = torch.export.load(f'model{name}.pt2').module()\n"
        "    torch.save(list(program(*torch.load(f'inputs{name}.pt'))), f'outputs{name}.pt')\n"
        "run(0)\n"
        "assert 'torchvision' not in sys.modules, 'the text artifact imported torchvision'\n"
        "from open_clip.tokenizer import SimpleTokenizer\n"
        "torch.save(SimpleTokenizer(context_length=32, clean='lower')(['cat', 'a red car']), 'tokens.pt')\n"
        "import torchvision\n"
        "run(3)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'sam3'], 'sam3 was imported'\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "tokens.pt"), checks[0].token_ids), "README's tokenizer differs"
    for num_boxes, check in checks.items():
        with torch.no_grad():
            expected = ExportableSam3(model)(*check.as_args())
        diffs = max_abs_diff(tuple(torch.load(tmp_path / f"outputs{num_boxes}.pt")), expected)
        assert max(diffs.values()) <= FP32_TOL, (num_boxes, diffs)


def test_bf16_export_keeps_the_fp32_contract(model):
    example = example_inputs(model, image_size=IMAGE_SIZE)
    program = export_model(model, example, use_bf16=True)
    check = _inputs(model, 3, 2, with_boxes=False)
    with torch.no_grad():
        got = program.module()(*check.as_args())
        eager_bf16 = ExportableSam3(model, use_bf16=True)(*check.as_args())
        eager_fp32 = ExportableSam3(model)(*check.as_args())
    assert all(t.dtype == torch.float32 for t in got)
    assert max(max_abs_diff(got, eager_bf16).values()) <= 1e-2
    assert max_abs_diff(got, eager_fp32)["scores"] <= 5e-2


@pytest.mark.slow
def test_aoti_package_equals_eager(model, programs, tmp_path):
    from torch._inductor import aoti_load_package

    package = compile_aoti(programs[3], tmp_path / "model.aoti.pt2")
    check = _inputs(model, 3, 2, with_boxes=True)
    with torch.no_grad():
        got = aoti_load_package(str(package))(*check.as_args())
        expected = ExportableSam3(model)(*check.as_args())
    diffs = max_abs_diff(tuple(got), expected)
    assert max(diffs.values()) <= AOTI_TOL, diffs


@pytest.mark.slow
def test_full_preset_export_matches_the_official_reference():
    """The `sam3` preset on SEEDED_INIT_V1 weights, exported at 1008 px with box prompts, against Meta's
    model on the FIXED_INPUT_V1 text + boxes case, at the eager parity test's tolerance (see
    `tests/model/test_reference_parity.py`: 1e-4 x std, logits 1e-4 x RMS, single values 1e-4 x |value|)."""
    from sam3.tools.reference_forward import BOX_LABELS, BOXES_CXCYWH, PROMPT, build_seeded_model
    from sam3.tools.seeded_init import fixed_input

    official = torch.load(REFERENCE_DIR / "sam3_image_seeded_outputs.pt", weights_only=True)["tensors"]
    model = build_seeded_model(0, manifest_path=REFERENCE_DIR / "sam3_image_state_dict.tsv")
    token_ids = model.backbone.language_backbone.tokenizer([PROMPT])
    boxes = torch.tensor([BOXES_CXCYWH])
    labels = torch.tensor([BOX_LABELS])
    args = (fixed_input(), token_ids, boxes, labels, torch.zeros_like(labels))
    program = export_model(model, example_inputs(model, image_size=1008, num_boxes=2))
    with torch.no_grad():
        logits, boxes_cxcywh, presence, masks, _ = program.module()(*args)
    order = logits[0, :, 0].argsort(descending=True)
    got = {
        "pred_logits": logits,
        "pred_boxes": boxes_cxcywh,
        "presence_logit_dec": presence,
        "pred_masks_pool36": torch.nn.functional.adaptive_avg_pool2d(masks, 36),
    }
    failures = []
    for key, value in got.items():
        ref = official[f"text_boxes/{key}"]
        scale = ref.pow(2).mean().sqrt() if key == "pred_logits" or ref.numel() == 1 else ref.std()
        err = (value - ref).abs().max()
        if not err <= 1e-4 * scale:
            failures.append(f"{key}: max err {err:.3e} > 1e-4 x {scale:.3e}")
    assert failures == []
    if torch.equal(order[:2], official["text_boxes/pred_masks_top2_idx"]):
        ref = official["text_boxes/pred_masks_top2"]
        assert (masks[0, order[:2]] - ref).abs().max() <= 1e-4 * ref.std()
