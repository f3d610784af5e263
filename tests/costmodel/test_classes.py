"""Identical replicas priced once (`costmodel/classes.py`) give the same PlanCost, field for
field, as pricing every replica: on the plans the fast planner scores for random clusters
(many copies of a few shapes) and on random mixed plans (few copies, shared nodes)."""

from __future__ import annotations

import random

import pytest
from tests.costmodel.test_gradsync_pieces import CLUSTER, MODEL, random_replicas

from polychip.costmodel import CostModel, classes
from polychip.plan.plan import Replica, Stage
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.spec.job import TrainingJob


def _every_replica_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classes, "replica_key", lambda cm, r: object())


@pytest.mark.parametrize("seed", range(6))
def test_grouped_equals_ungrouped_on_the_planners_candidates(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, model, job = random_case(seed, 32)
    cm = CostModel(cluster, model, job)
    scorer = Scorer(ShapeBuilder(cm, "1f1b"))
    FastSearch(scorer, 4).run(list(range(len(cluster.groups))))
    scored = scorer.scored()
    assert scored
    grouped = [cm.evaluate(s.replicas, "1f1b", s.zero1) for s in scored]
    assert any(len(set(r.shape_key() for r in s.replicas)) < len(s.replicas) for s in scored)
    _every_replica_alone(monkeypatch)
    alone = CostModel(cluster, model, job)
    assert [alone.evaluate(s.replicas, "1f1b", s.zero1) for s in scored] == grouped


@pytest.mark.parametrize("seed", range(20))
def test_grouped_equals_ungrouped_on_random_mixed_plans(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    replicas = random_replicas(random.Random(seed))
    job_args = (sum(r.batch_size for r in replicas), 128)
    cm = CostModel(CLUSTER, MODEL, TrainingJob(*job_args))
    grouped = [cm.evaluate(replicas, s, z) for s in ("1f1b", "gpipe") for z in (False, True)]
    _every_replica_alone(monkeypatch)
    alone = CostModel(CLUSTER, MODEL, TrainingJob(*job_args))
    assert [alone.evaluate(replicas, s, z) for s in ("1f1b", "gpipe") for z in (False, True)] \
        == grouped


def test_one_shape_over_other_links_is_priced_per_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same two-stage shape inside a node, across two nodes and across islands."""
    def pipe(n0: int, n1: int, slot: int) -> Replica:
        chip = (CLUSTER.nodes[n0].group.chip.name, CLUSTER.nodes[n1].group.chip.name)
        return Replica((Stage(0, 1, n0, (slot,), chip[0]), Stage(1, 2, n1, (slot + 1,), chip[1])),
                       4, 1)

    replicas = (pipe(0, 0, 0), pipe(1, 2, 2), pipe(0, 0, 4), pipe(2, 3, 4))
    cm = CostModel(CLUSTER, MODEL, TrainingJob(16, 128))
    assert len(classes.ReplicaClasses.of(cm, replicas).first) == 3
    grouped = cm.evaluate(replicas, "1f1b", True)
    _every_replica_alone(monkeypatch)
    assert CostModel(CLUSTER, MODEL, TrainingJob(16, 128)).evaluate(replicas, "1f1b", True) \
        == grouped
