"""The row-sparse comm hook gives DDP's dense average: the same gradients, on every rank, in fewer bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sam3.distributed.env import get_rank
from sam3.distributed.local_spawn import run_on_local_ranks
from sam3.distributed.row_sparse_grads import MIN_ROWS, register_row_sparse_hook, trained_embedding_weights

VOCAB, WIDTH = MIN_ROWS + 50, 6


class TokenModel(nn.Module):
    """A token table, a small table used whole, a frozen table and a linear layer: one bucket holds the
    token table's gradient beside dense ones."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(8, WIDTH)
        self.frozen = nn.Embedding(VOCAB, WIDTH).requires_grad_(False)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1])
        return self.head(self.tokens(ids) + self.positions(positions) + self.frozen(ids)).sum(1)


def _rank_ids(rank: int, step: int) -> torch.Tensor:
    """Token ids shared by the ranks and ids of one rank only."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    return torch.randint(0, 30 + 10 * rank, (4, 5), generator=generator)


def _grads_after_steps(use_hook: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = TokenModel()
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True, bucket_cap_mb=100)
    if use_hook:
        assert register_row_sparse_hook(ddp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in range(steps):
        optimizer.zero_grad()
        ddp(_rank_ids(get_rank(), step)).square().sum().backward()
        optimizer.step()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads.update({f"weight:{name}": p.detach().clone() for name, p in model.named_parameters()})
    return grads


def _both_ways() -> tuple[dict, dict]:
    return _grads_after_steps(use_hook=False), _grads_after_steps(use_hook=True)


@pytest.mark.parametrize("world_size", [2, 3])
def test_hook_gives_the_dense_average_on_every_rank(world_size):
    results = run_on_local_ranks(_both_ways, world_size, timeout_s=120)
    for dense, sparse in results:
        assert dense.keys() == sparse.keys()
        for name in dense:
            if world_size == 2:  # a + b in either order: bit-identical
                assert torch.equal(dense[name], sparse[name]), name
            else:  # the sum of three may be ordered differently: ulps, grown by 3 AdamW steps
                torch.testing.assert_close(
                    sparse[name], dense[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
                )
    for rank_result in results[1:]:  # every rank holds the same gradients and weights
        for name, value in rank_result[1].items():
            assert torch.equal(value, results[0][1][name]), name
    unused_rows = results[0][1]["tokens.weight"][30 + 10 * world_size :]
    assert torch.equal(unused_rows, torch.zeros_like(unused_rows))
    assert not torch.signbit(unused_rows).any()


def test_only_trained_dense_embeddings_are_row_sparse():
    model = TokenModel()
    assert [id(w) for w in trained_embedding_weights(model)] == [id(model.tokens.weight)]
    model.tokens.requires_grad_(False)
    assert trained_embedding_weights(model) == []
    assert trained_embedding_weights(nn.Embedding(MIN_ROWS, 2, sparse=True)) == []
