"""The fast planner against the exhaustive oracle on seeded random small clusters."""

from __future__ import annotations

import pytest

from polychip.costmodel import CostModel
from polychip.plan import Replica, Stage
from polychip.plan.capabilities import RUNTIME
from polychip.planner import plan_job
from polychip.planner.api import planner_job
from polychip.planner.exhaustive import Exhaustive
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

MAX_STAGES = 2


def _search(seed: int, max_chips: int, max_stages: int = MAX_STAGES, schedule: str = "1f1b"):
    cluster, model, job = random_case(seed, max_chips)
    cm = CostModel(cluster, model, job)
    groups = list(range(len(cluster.groups)))
    fast = FastSearch(Scorer(ShapeBuilder(cm, schedule)), max_stages).run(groups)
    oracle = Exhaustive(Scorer(ShapeBuilder(cm, schedule)), max_stages)
    exact = oracle.run(groups, incumbent=fast)
    return fast, exact


@pytest.mark.parametrize("seed", range(16))
def test_fast_is_within_one_percent_of_exhaustive(seed: int) -> None:
    fast, exact = _search(seed, max_chips=6)
    assert exact is not None
    assert fast is not None
    assert fast.tokens_per_s >= 0.99 * exact.tokens_per_s


@pytest.mark.parametrize("seed", [34, 40])
def test_fast_finds_three_stage_splits_whose_1f1b_windows_bind(seed: int) -> None:
    """Three stages at small batches, where 1F1B's windows decide between layer splits.
    Seed 34: the window of two neighbouring stages, which the layer split does not weigh
    (0.983 of the oracle before the polish moved layers between neighbours). Seed 40: two
    micro-batches per replica, too few for the first stage's window to bind (0.937 while
    the split charged it anyway)."""
    fast, exact = _search(seed, max_chips=8, max_stages=3)
    assert exact is not None and fast is not None
    assert fast.tokens_per_s >= 0.99 * exact.tokens_per_s


def test_fast_is_within_three_percent_of_exhaustive_under_zb_h1() -> None:
    """`--schedule zb-h1`: both searches with ZB-H1's shapes (its closed form, its memory)
    and the oracle's bounds on them (`floor_fill_s`, no sync floor: ZB-H1's first stage
    may be ready before the pipeline ends). The layer split weighs 1F1B's form, so the
    fast search is not always the oracle here: 14 of 16 random clusters equal, the worst
    0.978 (a mixed pipeline chosen over one 2-stage replica; docs/planner.md)."""
    ratios = []
    for seed in range(16):
        fast, exact = _search(seed, max_chips=8, schedule="zb-h1")
        assert exact is not None and fast is not None
        ratios.append(fast.tokens_per_s / exact.tokens_per_s)
    assert min(ratios) >= 0.97
    assert sum(r >= 1 - 1e-9 for r in ratios) >= 14


@pytest.mark.parametrize("schedule", ["1f1b", "zb-h1"])
def test_exhaustive_without_incumbent_agrees(schedule: str) -> None:
    """The incumbent only prunes: without it the oracle finds the same optimum."""
    cluster, model, job = random_case(2, 8)
    cm = CostModel(cluster, model, job)
    groups = list(range(len(cluster.groups)))
    seeded = Exhaustive(Scorer(ShapeBuilder(cm, schedule)), MAX_STAGES)
    fast = FastSearch(seeded.scorer, MAX_STAGES).run(groups)
    a = seeded.run(groups, incumbent=fast)
    b = Exhaustive(Scorer(ShapeBuilder(cm, schedule)), MAX_STAGES).run(groups)
    assert a is not None and b is not None
    assert b.tokens_per_s == pytest.approx(a.tokens_per_s, rel=1e-9)


def test_fast_finds_a_plan_that_fits_only_with_its_optimizer_sharded_four_ways() -> None:
    """Issue 12's case: 4 A100-80G (one node) and 8 RTX 4090 (two nodes), Llama-2-7B, batch
    64 x 2048, at most 2 stages. `plan --exhaustive` finds four pipelines A100 (TP 1,
    layers 0-19) -> RTX 4090 (TP 2), micro-batch 2, which fit only with ZeRO-1 over the 4
    replicas; the fast search checked memory at 1 and 8 shards only and stopped at 0.917 of
    it. It must now reach that plan (the oracle takes ~50 s: its plan is priced here)."""
    cluster = cluster_from_dict({"nodes": [
        {"chip": "a100-80g", "count": 1, "chips_per_node": 4, "nic_gbps": 100},
        {"chip": "rtx4090", "count": 2, "chips_per_node": 4, "nic_gbps": 100}]})
    model, job = load_model("llama2-7b"), TrainingJob(64, 2048)
    oracle = tuple(
        Replica((Stage(0, 19, 0, (a,), "a100-80g"), Stage(19, 32, node, pair, "rtx4090")), 16, 2)
        for a, (node, pair) in enumerate([(1, (0, 1)), (1, (2, 3)), (2, (0, 1)), (2, (2, 3))]))
    cost = CostModel(cluster, model, planner_job(job, RUNTIME)[0]).evaluate(oracle, zero1=True)
    assert cost.feasible
    assert not CostModel(cluster, model, job).evaluate(oracle, zero1=False).feasible
    fast = plan_job(cluster, model, job, max_stages=2, schedule="1f1b")
    assert fast.estimate.tokens_per_s >= cost.tokens_per_s * (1 - 1e-9)
