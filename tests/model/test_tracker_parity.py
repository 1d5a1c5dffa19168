"""Memory-tracker parity: our TRACKER_SESSION_V1 (`sam3.tools.reference_tracker`) against Meta's, gated by
`sam3.tools.compare_tracker` (the reference README's rule: mask tensors within 1e-4 x the robust std of their
kind, 3e-3 downstream of a binarisation flip; everything else reported).

Seed 0 is the stored reference (every object score > 0). The slow test runs Meta's oracle on held-out seeds
in which objects go absent (object score <= 0: -1024 masks, `no_obj_ptr`, `no_obj_embed_spatial`).
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from sam3.tools.compare_tracker import compare_tracker, mask_scale
from sam3.tools.reference_tracker import reference_tracker
from tests.helpers import official_reference_script, oracle_python, reference_file

# Held-out seeds on which Meta's session has absent objects (object score <= 0), checked with the oracle:
# seed 2: 47 of 56 scores (the first click, the box, then every tracked frame of every object; over half of the
# masks are -1024, so the mask scale comes from the other values); seed 7: 7 of 56 (objects 1 and 2 absent on
# the conditioning frame 0 only, then tracked from that memory and present on every later frame).
HELD_OUT_SEEDS = (7,)  # objects absent on the conditioning frame, then tracked (seed 2: absent nearly everywhere)


@pytest.fixture(scope="module")
def official_seed0() -> dict:
    path = reference_file("sam3_tracker_seeded_outputs.pt")
    if path is None:
        pytest.skip("sam3_tracker_seeded_outputs.pt not found (tests/assets/reference or ../shared/reference)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def ours_seed0(official_seed0) -> dict:
    return reference_tracker(0)


def memattn_schedule(meta: dict) -> list[tuple[str, int, bool]]:
    return [(call["step"], call["frame"], call["reverse"]) for call in meta["memattn_calls"]]


def test_seed0_matches_reference(ours_seed0, official_seed0):
    ours, official = ours_seed0, official_seed0
    assert {k: tuple(v.shape) for k, v in ours["tensors"].items()} == {
        k: tuple(v.shape) for k, v in official["tensors"].items()
    }
    assert memattn_schedule(ours["meta"]) == memattn_schedule(official["meta"])
    assert memattn_schedule(ours["meta"]["memsel"]) == memattn_schedule(official["meta"]["memsel"])
    assert ours["meta"]["cond_frames_at_end"] == official["meta"]["cond_frames_at_end"]
    result = compare_tracker(ours, official)
    assert result.passed, result.report()
    # The recipe's tolerance rule: the re-encoded corrected frame has upsampled logits within ~1e-6 of 0,
    # so a different thread count can flip a pixel there (Meta against itself does too); nowhere else.
    assert set(result.flips) <= {("", "s6_propagate_rev", 5), ("memsel/", "s6_propagate_rev", 5)}, result.report()
    assert set(result.worst_by_kind()) == {"low_res_masks", "pred_masks", "video_res_masks"} | {
        "memsel/low_res_masks",
        "memsel/pred_masks",
    }


def test_comparator_fails_on_a_perturbed_mask(official_seed0):
    """On the official file itself, so our own numerics (and their thread count) play no part."""
    tensors = dict(official_seed0["tensors"])
    key = "s4_propagate_fwd/f3/low_res_masks"
    scale = mask_scale(
        torch.cat([v.flatten() for k, v in official_seed0["tensors"].items() if k.endswith("/low_res_masks")])
    )
    bumped = tensors[key].clone()
    bumped[1, 0, 10, 20] += 1e-2 * scale
    tensors[key] = bumped
    result = compare_tracker({**official_seed0, "tensors": tensors}, official_seed0)
    assert not result.passed
    assert [f for f in result.failures if f.startswith(key + ":")], result.report()
    assert result.mask_errors[key] == pytest.approx(1e-2, rel=1e-3)


def test_comparator_gates_keys_shapes_and_memory_dtype(official_seed0):
    """On the official file itself, so our own numerics (and their thread count) play no part."""
    tensors = dict(official_seed0["tensors"])
    tensors["s4_propagate_fwd/f1/maskmem_features"] = tensors["s4_propagate_fwd/f1/maskmem_features"].float()
    tensors["s0_add_f0_obj1/pred_masks"] = tensors["s0_add_f0_obj1/pred_masks"][..., :32]
    del tensors["s4_propagate_fwd/f2/obj_ptr"]
    failures = compare_tracker({**official_seed0, "tensors": tensors}, official_seed0).failures
    assert any("f1/maskmem_features" in f and "bfloat16" in f for f in failures)
    assert any(f.startswith("s0_add_f0_obj1/pred_masks: shape") for f in failures)
    assert any(f.startswith("s4_propagate_fwd/f2/obj_ptr: only in official") for f in failures)


@pytest.mark.slow
@pytest.mark.parametrize("seed", HELD_OUT_SEEDS)
def test_held_out_seed_with_absent_objects(tmp_path, seed):
    script = official_reference_script()
    python = oracle_python()
    out = tmp_path / "official.pt"
    done = subprocess.run(
        [python, str(script), "tracker", "--seed", str(seed), "--out", str(out)],
        cwd=tmp_path,  # not the checkout: the oracle must import Meta's sam3, not ours
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    official = torch.load(out, weights_only=True)
    scores = torch.cat([v.flatten() for k, v in official["tensors"].items() if k.endswith("object_score_logits")])
    assert (scores <= 0).any() and (scores > 0).any(), f"seed {seed} no longer exercises absent objects"
    ours = reference_tracker(seed)
    assert memattn_schedule(ours["meta"]) == memattn_schedule(official["meta"])
    assert memattn_schedule(ours["meta"]["memsel"]) == memattn_schedule(official["meta"]["memsel"])
    result = compare_tracker(ours, official)
    assert result.passed, result.report()


def test_comparator_relaxes_only_downstream_of_a_binarisation_flip(official_seed0):
    """On the official file itself, so our own numerics (and their thread count) play no part."""
    tensors = dict(official_seed0["tensors"])
    cond = "s4_propagate_fwd/f0/low_res_masks"  # frame 0's memory is encoded from these, binarised
    flipped = tensors[cond].clone()
    flipped[0, 0, 30, 30] = -100.0 * flipped[0, 0, 30, 30].sign()
    tensors[cond] = flipped
    scale = compare_tracker(official_seed0, official_seed0).scales["low_res_masks"]
    before, after = "s2_add_f0_obj2/pred_masks", "s4_propagate_fwd/f3/low_res_masks"
    for key in (before, after):
        tensors[key] = tensors[key] + 1e-3 * scale
    result = compare_tracker({**official_seed0, "tensors": tensors}, official_seed0)
    assert result.flips == [("", "s4_propagate_fwd", 0)]
    failed = {f.split(":")[0] for f in result.failures}
    assert cond in failed and before in failed and after not in failed, result.report()
