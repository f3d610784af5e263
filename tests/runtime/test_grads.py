"""Sample-weighted gradients: uneven data parallelism equals single-process training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from polychip.runtime.data import SampleStream, StdlibCorpus, share_range
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.grads import (
    AllReduce,
    hierarchical_allreduce_,
    new_island_groups,
    scale_for_share,
    weighted_allreduce_,
)
from polychip.runtime.model import build_full_model, loss_fn

from .distenv import run_ranks
from .plans import MICRO

SEQ_LEN = 8
ATOL = 1e-10


def _optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train_and_compare(rank: int, shares: list[int], optimizer: str, num_steps: int,
                       allreduce: AllReduce | None = None) -> None:
    """Train one replica on its share with weighted_allreduce_, and the single-process
    reference on the whole batch; their parameters must agree after every step."""
    global_batch = sum(shares)
    stream = SampleStream(StdlibCorpus(max_bytes=32 * 1024), SEQ_LEN, seed=0)
    model = build_full_model(MICRO, seed=0, dtype=torch.float64)
    reference = build_full_model(MICRO, seed=0, dtype=torch.float64)
    opt, ref_opt = _optimizer(optimizer, model), _optimizer(optimizer, reference)
    for step in range(num_steps):
        x, y = stream.batch_for(step, share_range(shares, rank))
        opt.zero_grad()
        if len(x):
            loss_fn(model(x), y).backward()
        weighted_allreduce_(model.parameters(), shares[rank], global_batch,
                            allreduce=allreduce)
        opt.step()

        x, y = stream.batch_for(step, range(global_batch))
        ref_opt.zero_grad()
        loss_fn(reference(x), y).backward()
        ref_opt.step()
        ref_params = dict(reference.named_parameters())
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, ref_params[name], rtol=0, atol=ATOL,
                                       msg=f"rank {rank} step {step} {name} ({optimizer})")


def _uneven_dp_worker(rank: int, world_size: int) -> None:
    for optimizer in ("sgd", "adamw"):
        _train_and_compare(rank, [12, 4], optimizer, num_steps=3)


@pytest.mark.dist
def test_uneven_shares_12_4_equal_single_process_training(tmp_path: Path) -> None:
    run_ranks(_uneven_dp_worker, 2, tmp_path)


def _islands_worker(rank: int, world_size: int) -> None:
    islands = new_island_groups([[0, 1], [2, 3]])
    assert islands.is_island_leader == (rank in (0, 2))
    assert (islands.bridge_group is not None) == islands.is_island_leader

    # Integer-valued tensors: the sum is exact whatever the order, so flat == hierarchical.
    ints = torch.arange(10, dtype=torch.float64) * (rank + 1)
    flat, hier = ints.clone(), ints.clone()
    dist.all_reduce(flat)
    hierarchical_allreduce_(hier, islands.island_group, islands.bridge_group,
                            islands.is_island_leader)
    assert torch.equal(hier, flat)
    assert torch.equal(hier, torch.arange(10, dtype=torch.float64) * 10)

    noise = torch.randn(1000, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(rank))
    flat, hier = noise.clone(), noise.clone()
    dist.all_reduce(flat)
    islands.allreduce(hier)
    torch.testing.assert_close(hier, flat, rtol=0, atol=1e-12)

    # Uneven shares across two islands (one with an empty replica) still train exactly.
    _train_and_compare(rank, [7, 0, 6, 3], "adamw", num_steps=2, allreduce=islands.allreduce)

    with pytest.raises(RuntimeSetupError, match="leader"):
        hierarchical_allreduce_(hier, islands.island_group, islands.bridge_group,
                                not islands.is_island_leader)


@pytest.mark.dist
def test_two_islands_hierarchical_allreduce_equals_flat(tmp_path: Path) -> None:
    run_ranks(_islands_worker, 4, tmp_path)


def test_weighted_allreduce_scales_buckets_and_fills_missing_grads() -> None:
    a = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(4, dtype=torch.float32))
    c = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    a.grad = torch.ones(2, 3, dtype=torch.float64)
    b.grad = torch.full((4,), 2.0)
    calls: list[torch.Tensor] = []
    weighted_allreduce_([a, b, c], 3, 4, allreduce=calls.append)
    assert sorted(t.numel() for t in calls) == [4, 11]  # one buffer per dtype
    assert torch.equal(a.grad, torch.full((2, 3), 0.75, dtype=torch.float64))
    assert torch.equal(b.grad, torch.full((4,), 1.5))
    assert torch.equal(c.grad, torch.zeros(5, dtype=torch.float64))


def test_scale_for_share() -> None:
    assert scale_for_share(12, 16) == 0.75
    assert scale_for_share(0, 16) == 0.0
    with pytest.raises(RuntimeSetupError, match="batch_share=17"):
        scale_for_share(17, 16)
    with pytest.raises(RuntimeSetupError, match="global_batch=0"):
        scale_for_share(0, 0)
