"""Gradient sync overlapped with the backward: buckets start as the last backward produces
their gradients, and the result is bit for bit that of the sync after the backward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from polychip.plan import Plan
from polychip.runtime.topology import build_topology
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import TINY4, cluster, dp_plan, hybrid_plan
from .reference import CORPUS_BYTES

STEPS = 3


def _overlap(plan: Plan, on: bool) -> Plan:
    return dataclasses.replace(plan, job=dataclasses.replace(plan.job, overlap_grad_sync=on))


def _train(plan: Plan, rank: int) -> tuple[dict[str, torch.Tensor], list, list[int]]:
    # float32: sums are not exact, so equal results mean equal calls in equal order
    config = TrainConfig(steps=STEPS, dtype="float32", lr=0.01, bucket_bytes=2048,
                         max_corpus_bytes=CORPUS_BYTES)
    trainer = Trainer(plan, config, build_topology(plan, rank, emulate=True,
                                                   timeout=config.timeout))
    early, losses = [], []
    for step in range(STEPS):
        record = trainer.step(step)
        early.append(trainer.grads.readiness.early)
        losses.append(record.global_loss)
    assert len(trainer.grads.buckets) > 1 or not trainer.grads.buckets
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return params, losses, [*early, len(trainer.grads.buckets)]


def _worker(rank: int, world_size: int, plan: Plan) -> None:
    after, after_losses, none = _train(_overlap(plan, False), rank)
    during, during_losses, early = _train(_overlap(plan, True), rank)
    assert none[:-1] == [0] * STEPS  # every bucket ran at its AR action
    assert early[:-1] == [early[-1]] * STEPS  # every bucket started during the backward
    assert during_losses == after_losses
    for name, p in after.items():
        assert torch.equal(during[name], p), f"rank {rank} {name}"


def _two_islands() -> Plan:
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10}])
    return dp_plan(c, [(0, 0, "cpu-fast", 6, 2), (0, 1, "cpu-fast", 4, 2),
                       (1, 0, "cpu-slow", 3, 1), (1, 1, "cpu-slow", 1, 1)], model=TINY4)


@pytest.mark.dist
@pytest.mark.parametrize("plan", [_two_islands(), hybrid_plan()],
                         ids=["data-parallel, 2 + 2 ranks in two islands",
                              "pipeline, TP 2 beside TP 1, two islands"])
def test_overlapped_sync_equals_the_sync_after_the_backward(tmp_path: Path, plan: Plan) -> None:
    run_ranks(_worker, plan.world_size, tmp_path, plan)
