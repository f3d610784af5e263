"""Sample-weighted gradients and the collectives' description executed: uneven data
parallelism equals single-process training, the sharded bridge equals a flat all-reduce, and
the bytes the runtime's calls move on each link are the description's and the cost model's."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from polychip.costmodel import CostModel, LinkKind
from polychip.costmodel.gradsync import segment_hops
from polychip.plan import Plan
from polychip.plan.collectives import BRIDGE, ISLAND, describe
from polychip.plan.segments import grad_segments
from polychip.runtime.commcount import count_calls, sent_bytes
from polychip.runtime.data import SampleStream, StdlibCorpus, share_range
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.grads import AllReduce, RankCollective, scale_for_share, weighted_allreduce_
from polychip.runtime.groups import GroupMaker, rank_collective
from polychip.runtime.model import build_full_model, loss_fn
from polychip.runtime.topology import build_topology, rank_roles
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import MICRO, cluster, dp_plan
from .reference import CORPUS_BYTES

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


def _padded(coll: RankCollective) -> AllReduce:
    """An all-reduce of any length through ``coll`` (padded to its granularity)."""
    def run(t: torch.Tensor) -> None:
        grain = coll.description.granularity
        flat = torch.cat((t, t.new_zeros(-t.numel() % grain)))
        coll.run(flat)
        t.copy_(flat[:t.numel()])
    return run


def _islands_worker(rank: int, world_size: int) -> None:
    maker = GroupMaker(rank, timedelta(seconds=60))
    roles = rank_roles(_two_islands_plan((2, 2)), emulate=True)
    for islands in ([[0, 1], [2, 3]], [[0], [1, 2, 3]], [[0, 1, 2, 3]]):
        coll = rank_collective(maker, describe("all-reduce", tuple(map(tuple, islands))), roles)
        # Integer values: sums are exact in any order, so sharded == flat bit for bit.
        ints = torch.arange(12, dtype=torch.float64) * (rank + 1)
        flat, mine = ints.clone(), ints.clone()
        dist.all_reduce(flat)
        coll.run(mine)
        assert torch.equal(mine, flat) and torch.equal(mine, torch.arange(12.0) * 10)
        noise = torch.randn(1200, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(rank))
        flat, mine = noise.clone(), noise.clone()
        dist.all_reduce(flat)
        coll.run(mine)
        torch.testing.assert_close(mine, flat, rtol=0, atol=1e-12)
        with pytest.raises(AssertionError):
            coll.run(torch.zeros(coll.description.granularity * 3 + 1, dtype=torch.float64))
    # Uneven shares across two unequal islands (one replica empty) still train exactly.
    _train_and_compare(rank, [7, 0, 6, 3], "adamw", num_steps=2, allreduce=_padded(coll))


@pytest.mark.dist
def test_sharded_bridge_equals_a_flat_all_reduce(tmp_path: Path) -> None:
    run_ranks(_islands_worker, 4, tmp_path)


# ---- bytes on each link --------------------------------------------------------------------
def _two_islands_plan(sizes: tuple[int, int]) -> Plan:
    """``sizes[0]`` cpu-fast chips on node 0 (one island), ``sizes[1]`` cpu-slow chips on
    node 1 (another), one replica each."""
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": sizes[0], "nic_gbps": 10},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": sizes[1], "nic_gbps": 10}])
    return dp_plan(c, [(0, d, "cpu-fast", 2, 1) for d in range(sizes[0])]
                   + [(1, d, "cpu-slow", 2, 1) for d in range(sizes[1])])


def _model_bytes(plan: Plan, rank: int) -> dict[str, float]:
    """What the cost model's hops charge this rank: bytes it sends per kind of link."""
    cm = CostModel(plan.cluster, plan.model, plan.job)
    out: dict[str, float] = {}
    for seg in grad_segments(plan):
        for _, hops in segment_hops(cm, plan.replicas, seg, "all-reduce", cm.job.reduce_bytes):
            for h in hops:
                if h.src == rank:
                    link = BRIDGE if h.kind is LinkKind.BRIDGE else ISLAND
                    out[link] = out.get(link, 0.0) + h.n_bytes
    return out


def _bytes_worker(rank: int, world_size: int, plan: Plan) -> None:
    config = TrainConfig(steps=1, dtype="float32", max_corpus_bytes=CORPUS_BYTES)
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=True,
                                                   timeout=config.timeout))
    with count_calls() as records:
        trainer.run(1)
    roles = trainer.topology.roles
    measured = sent_bytes(records, lambda r: roles[r].island)
    expected: dict[str, float] = {}
    for bucket in trainer.grads.buckets:
        (piece,) = bucket.pieces
        n_bytes = (bucket.end - bucket.start) * trainer.grads.buffer.element_size()
        for (r, link), b in piece.allreduce.description.sent_bytes(n_bytes).items():
            if r == rank:
                expected[link] = expected.get(link, 0.0) + b
    assert measured == pytest.approx(expected, rel=1e-12)
    model = _model_bytes(plan, rank)
    assert set(model) == set(measured)
    for link, b in model.items():  # the buffer also pads, and carries the loss
        assert b <= measured[link] <= b * 1.01, (rank, link, b, measured[link])
    buffer_bytes = trainer.grads.buffer.numel() * 4
    island = next(i for i in trainer.topology.islands if rank in i)
    k = len(trainer.topology.islands)
    # every rank bridges its own shard of the buffer: never the whole buffer through a leader
    assert measured[BRIDGE] == pytest.approx(2 * (k - 1) / k * buffer_bytes / len(island))


@pytest.mark.dist
@pytest.mark.parametrize("sizes", [(2, 2), (1, 2)])
def test_bytes_on_each_link_are_the_descriptions_and_the_cost_models(
        tmp_path: Path, sizes: tuple[int, int]) -> None:
    run_ranks(_bytes_worker, sum(sizes), tmp_path, _two_islands_plan(sizes))


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
