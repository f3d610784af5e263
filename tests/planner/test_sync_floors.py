"""The estimate's gradient-sync floor (`Estimator.sync_floor_s`) is a lower bound on its
gradient sync (`Estimator.dp_sync_s`), so `FastSearch._ranked` may skip what it rules out."""

from __future__ import annotations

from pathlib import Path

import pytest

from polychip.costmodel import CostModel
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[2]


def _check(search: FastSearch, buckets: tuple[int, ...]) -> list[float]:
    """The candidates of these memory contexts (400 each at most): floor <= sync, with and
    without ZeRO-1, and a positive floor wherever a shape has two replicas or more; the
    floor's share of the sync where that is positive."""
    groups = list(range(len(search.cluster.groups)))
    shares = []
    for bucket in buckets:
        for _, cand in search._candidates(groups, bucket, bucket)[:400]:
            for zero1 in (False, True):
                floor = search.estimator.sync_floor_s(cand, zero1)
                sync = search.estimator.dp_sync_s(cand, zero1)
                assert 0.0 <= floor <= sync, (cand, zero1, floor, sync)
                assert floor > 0 or max(n for _, n in cand) < 2
                if sync > 0:
                    shares.append(floor / sync)
    return shares


@pytest.mark.parametrize("seed", range(16))
def test_the_sync_floor_is_below_the_estimated_sync(seed: int) -> None:
    """Also under ZB-H1, whose first stages may be ready before the pipeline's end."""
    cluster, model, job = random_case(seed, 64)
    schedule = "zb-h1" if seed % 4 == 3 else "1f1b"
    search = FastSearch(Scorer(ShapeBuilder(CostModel(cluster, model, job), schedule)), 4)
    assert _check(search, (1, 2, 4))  # candidates with a sync were checked


def test_the_sync_floor_on_a_large_mixed_cluster() -> None:
    """Many nodes of two islands (rings over the NICs, bridges): the floor holds and is
    most of the sync for the best candidates (what lets `_ranked` skip the rest)."""
    cluster = load_cluster(ROOT / "examples" / "clusters" / "h800-910b.yaml")
    cm = CostModel(cluster, load_model("llama3-70b"), TrainingJob(512, 4096))
    shares = _check(FastSearch(Scorer(ShapeBuilder(cm, "1f1b")), 16), (8,))
    assert sorted(shares)[len(shares) // 2] > 0.5


def test_the_tokens_bound_is_above_the_estimate() -> None:
    cluster, model, job = random_case(3, 64)
    search = FastSearch(Scorer(ShapeBuilder(CostModel(cluster, model, job), "1f1b")), 4)
    groups = list(range(len(cluster.groups)))
    checked = 0
    for _, cand in search._candidates(groups, 1, 1):
        pipe = search.estimator.pipeline_s(cand)
        if pipe is not None:
            bound = search.estimator.tokens_bound(cand, pipe)
            assert search.estimator.tokens_per_s(cand) <= bound <= job.tokens_per_step / pipe * (
                1 + 1e-9)
            checked += 1
    assert checked


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "zb-h1"])
def test_the_exact_bound_with_its_sync_floor_is_below_the_step(schedule: str) -> None:
    """`Scorer.bound_s` (each shape's busiest pipeline plus `_sync_floor_s`, the optimizer)
    never exceeds the step `CostModel.evaluate` gives a placed candidate: every candidate
    the search scores, and its 40 best estimated, on random clusters of up to 64 chips; on
    some of them the floor is positive (first stages over several nodes; 1F1B and GPipe
    only)."""
    positive = 0
    for seed in range(12):
        cluster, model, job = random_case(seed, 64)
        scorer = Scorer(ShapeBuilder(CostModel(cluster, model, job), schedule))
        search = FastSearch(scorer, 4)
        search.run(list(range(len(cluster.groups))))
        for _, cand in search._ranked(search.pool, everything=True)[:40]:
            scorer.score(cand)  # more than the shortlist: candidates of every kind
        for s in scorer.scored():
            shapes = [(shape, len(ms)) for shape, ms in s.classes]
            bound = scorer.bound_s(shapes, [ms for _, ms in s.classes])
            assert bound <= s.cost.step_time_s * (1 + 1e-12), (seed, bound, s.cost)
            pipelined = any(shape.num_stages > 1 for shape, _ in shapes)
            positive += any(scorer._sync_floor_s(shape, len(ms), s.zero1, pipelined) > 0
                            for shape, ms in s.classes)
    assert positive > 0 or schedule == "zb-h1"
