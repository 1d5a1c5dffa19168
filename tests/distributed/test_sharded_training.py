"""Frame-sharded training equals one process on the whole clip (loss, every gradient, inference).

Each case spawns real gloo ranks; dropout, drop-path and mask importance sampling are off (see
`sam3.tools.check_frame_sharding`). Tolerance: per-tensor relative error below 1e-5 in fp32.
"""

import pytest

from sam3.tools.check_frame_sharding import CheckConfig, check

TOLERANCE = 1e-5


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("world_size", "group_size", "num_frames"),
    [
        (2, 2, 4),  # even split
        (3, 3, 5),  # frames not divisible by the group
        (3, 3, 2),  # fewer frames than ranks: rank 2 holds none and must not hang
        (4, 2, 4),  # two frame groups of two ranks, a different clip per group
    ],
)
def test_sharded_step_equals_single_process(world_size, group_size, num_frames):
    result = check(CheckConfig(world_size=world_size, group_size=group_size, num_frames=num_frames))
    assert result.num_params_compared > 0
    assert result.loss < TOLERANCE, result
    assert result.max_grad < TOLERANCE, result
    assert result.negligible_grad < TOLERANCE, result
    assert result.inference < TOLERANCE, result
