"""ZeRO-1 executed: optimizer state sharded among the ranks holding the same parameters
(across islands, replicas of uneven shares, replicas of other TP degrees), exact against
single-process training; the optimizer state each rank holds is the cost model's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from polychip.costmodel import CostModel
from polychip.plan import Plan
from polychip.runtime.shards import owned_spans
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import TINY4, cluster, dp_plan, hybrid_plan
from .reference import CORPUS_BYTES, single_process

ATOL = 1e-12
STEPS = 3


def _zero(plan: Plan) -> Plan:
    return dataclasses.replace(plan, zero1=True)


def _islands(sizes: tuple[int, int], shares: tuple[int, ...]) -> Plan:
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": sizes[0], "nic_gbps": 10},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": sizes[1], "nic_gbps": 10}])
    chips = [(0, d, "cpu-fast") for d in range(sizes[0])] + [
        (1, d, "cpu-slow") for d in range(sizes[1])]
    return _zero(dp_plan(c, [(n, d, chip, s, 1) for (n, d, chip), s in zip(chips, shares,
                                                                           strict=True)],
                         model=TINY4))


def _exact_worker(rank: int, world_size: int, plan: Plan) -> None:
    config = TrainConfig(steps=STEPS, dtype="float64", optimizer="adamw", lr=0.05,
                         bucket_bytes=4096, max_corpus_bytes=CORPUS_BYTES)
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=True,
                                                   timeout=config.timeout))
    records = trainer.run(STEPS)
    ref_losses, ref_params = single_process(plan, config)
    if trainer.role.last_stage:
        for record, expected in zip(records, ref_losses, strict=True):
            assert record.global_loss == pytest.approx(expected, abs=ATOL)
    for name, p in trainer.model.named_parameters():
        want = trainer.model.shard(name, ref_params[name])
        torch.testing.assert_close(p, want, rtol=0, atol=ATOL, msg=f"rank {rank} {name}")
    # the rank steps only its shard: fewer parameters than it holds
    owned = sum(s.numel for s in owned_spans(trainer.grads))
    held = sum(p.numel() for p in trainer.model.parameters())
    assert owned < held


@pytest.mark.dist
@pytest.mark.parametrize("plan", [
    _islands((2, 2), (6, 2, 3, 1)), _islands((1, 2), (4, 3, 1)), _zero(hybrid_plan())],
    ids=["two islands of 2, uneven shares", "islands of 1 and 2", "pipeline, TP 2 beside TP 1"])
def test_zero1_trains_exactly_like_one_process(tmp_path: Path, plan: Plan) -> None:
    run_ranks(_exact_worker, plan.world_size, tmp_path, plan)


def _memory_worker(rank: int, world_size: int, plans: list[Plan]) -> None:
    for plan in plans:  # bf16 mixed precision, the job's own: the cost model's convention
        config = TrainConfig(steps=1, bucket_bytes=4096, max_corpus_bytes=CORPUS_BYTES)
        trainer = Trainer(plan, config, build_topology(plan, rank, emulate=True,
                                                       timeout=config.timeout))
        trainer.run(1)
        cm = CostModel(plan.cluster, plan.model, plan.job)
        zero = len(plan.replicas) if plan.zero1 else 1
        predicted = cm.memory_of(plan.replicas[rank], 0, plan.schedule, zero)
        grads = trainer.grads
        params = sum(p.numel() for p in trainer.model.parameters())
        state = trainer.optimizer.state_bytes()
        # fp32 master, m and v: 12 bytes per parameter stepped, 1/Z of them under ZeRO-1;
        # a rank may own a bucket's padding instead of parameters (a few elements)
        slack = 12 * sum(b.end - b.start - sum(e.numel for e in b.entries)
                         for b in grads.buckets)
        assert predicted.optimizer - slack <= state <= predicted.optimizer + 12, (rank, state)
        # bf16 weights; the gradient buffer in the reduce dtype (fp32): the convention of
        # team.md, compared by its formula while the cost model's MemoryBreakdown still
        # prices 16-bit gradients (MemoryBreakdown.weights is 2 bytes/param already)
        assert predicted.weights == 2 * params
        assert sum(p.numel() * p.element_size() for p in trainer.model.parameters()) == (
            predicted.weights)
        assert grads.buffer.element_size() == plan.job.reduce_bytes == 4
        real = sum(e.numel for e in grads.entries if e.name != "<loss>")
        assert real == params


@pytest.mark.dist
def test_optimizer_state_per_rank_is_what_the_cost_model_prices(tmp_path: Path) -> None:
    plan = _islands((2, 2), (2, 2, 2, 2))
    run_ranks(_memory_worker, 4, tmp_path, [plan, dataclasses.replace(plan, zero1=False)])
