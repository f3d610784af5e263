"""What lets the planner scale changes no plan: exact bounds prune only candidates that
cannot win, and the cheaper bookkeeping finds the same plans (docs/planner.md, "How the
search scales")."""

from __future__ import annotations

import math
import random

import pytest

from polychip.costmodel import CostModel
from polychip.planner import caps as caps_module
from polychip.planner.assign import assign
from polychip.planner.bounds import most_replicas
from polychip.planner.caps import LayerCaps, line_error
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import EXACT_SHORTLIST, FastSearch
from polychip.planner.shapes import ShapeBuilder


def _search(seed: int, prune: bool, stages: int = 4):
    cluster, model, job = random_case(seed, 16)
    scorer = Scorer(ShapeBuilder(CostModel(cluster, model, job), "1f1b"), prune=prune)
    return FastSearch(scorer, stages).run(list(range(len(cluster.groups)))), scorer


@pytest.mark.parametrize("seed", range(12))
def test_the_exact_bound_is_below_every_evaluated_step(seed: int) -> None:
    """`Scorer.bound_s` (slowest pipeline + optimizer) never exceeds the step
    `CostModel.evaluate` gives the placed plan."""
    _, scorer = _search(seed, prune=False)
    assert scorer.scored()
    for s in scorer.scored():
        shapes = [(shape, len(ms)) for shape, ms in s.classes]
        bound = scorer.bound_s(shapes, [ms for _, ms in s.classes])
        assert bound <= s.cost.step_time_s * (1 + 1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_pruning_finds_the_same_plan(seed: int) -> None:
    plain, _ = _search(seed, prune=False)
    pruned, scorer = _search(seed, prune=True)
    assert scorer.pruned > 0  # the bound did cut candidates here
    assert plain is not None and pruned is not None
    assert pruned.replicas == plain.replicas
    assert pruned.tokens_per_s == plain.tokens_per_s


@pytest.mark.parametrize("seed", range(8))
def test_the_estimates_stop_without_changing_the_shortlist(seed: int) -> None:
    """`_ranked` stops estimating once no bound (pipeline, or with the sync floor) reaches
    the shortlist's last estimate: its first EXACT_SHORTLIST entries are those of
    estimating everything."""
    cluster, model, job = random_case(seed, 16)
    search = FastSearch(Scorer(ShapeBuilder(CostModel(cluster, model, job), "1f1b")), 4)
    groups = list(range(len(cluster.groups)))
    pool = {}
    for bucket in (1, 2, 4):
        for family, cand in search._candidates(groups, bucket, bucket):
            pipe = search.estimator.pipeline_s(cand)
            if pipe is not None and search._memory_context_holds(cand):
                pool[tuple(sorted((id(s), n) for s, n in cand))] = (
                    job.tokens_per_step / pipe, family, cand, pipe)
    short = search._ranked(list(pool.values()))[:EXACT_SHORTLIST]
    assert short == search._ranked(list(pool.values()), everything=True)[:EXACT_SHORTLIST]


@pytest.mark.parametrize("seed", range(8))
def test_a_context_skipped_for_its_replicas_has_no_candidate(seed: int) -> None:
    """A memory context of more ZeRO shards than `most_replicas` allows puts no candidate in
    the pool: each there has fewer replicas than its shapes assume, or more sequences than
    the global batch."""
    cluster, model, job = random_case(seed, 16)
    search = FastSearch(Scorer(ShapeBuilder(CostModel(cluster, model, job), "1f1b")), 4)
    groups = list(range(len(cluster.groups)))
    most = [most_replicas(search.builder, groups, b) for b in range(1, 33)]
    skipped = [b for b in range(2, 33) if b > most[b - 1]]
    assert skipped  # small clusters leave contexts out
    for b in skipped[:3]:
        assert not [c for _, c in search._candidates(groups, b, b)
                    if search._memory_context_holds(c)
                    and search.estimator.pipeline_s(c) is not None]


def _random_context(rng: random.Random, cluster) -> tuple:
    """(group, tp, micro-batch, first, last, recompute, in flight, shards): in flight up to
    GPipe's hundreds."""
    return (rng.randrange(len(cluster.groups)), rng.choice([1, 2]), rng.choice([1, 2, 4]),
            rng.random() < 0.3, rng.random() < 0.3, rng.random() < 0.5,
            rng.choice([rng.randint(1, 8), rng.randint(9, 512)]), rng.choice([1, 2, 8, 64]))


def _memory(cm: CostModel, args: tuple, n: int) -> int:
    g, tp, mb, first, last, rec, flight, shards = args
    return cm.stage_memory(cm.cluster.groups[g].chip, n, tp, mb, first=first, last=last,
                           in_flight=flight, recompute=rec, zero_shards=shards).total


@pytest.mark.parametrize("walk", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_memory_caps_equal_a_plain_search(seed: int, walk: bool, monkeypatch) -> None:
    """Caps, in a random order of contexts, equal the most layers that fit by a plain
    search: decided by the memory line where it is clear of the capacity, and (``walk``:
    the line never trusted) walked with memory checks."""
    if walk:
        monkeypatch.setattr(caps_module, "line_error", lambda *_: math.inf)
    cluster, model, job = random_case(seed, 16)
    cm = CostModel(cluster, model, job)
    caps, rng = LayerCaps(cm), random.Random(seed)
    for _ in range(300):
        args = _random_context(rng, cluster)
        want = max([n for n in range(model.num_layers + 1)
                    if _memory(cm, args, n) <= cluster.groups[args[0]].chip.memory_bytes],
                   default=0)
        assert caps.cap(*args) == want


@pytest.mark.parametrize("seed", range(8))
def test_the_memory_line_is_within_its_error_bound(seed: int) -> None:
    """`caps.line_error` bounds how far the line through three stage memories is from the
    stage memory, at every layer count from one on: what lets the line alone decide a cap."""
    cluster, model, job = random_case(seed, 16)
    cm = CostModel(cluster, model, job)
    caps, rng = LayerCaps(cm), random.Random(seed)
    for _ in range(60):
        args = _random_context(rng, cluster)
        fixed, per_layer = caps._line_at(args[:6], args[6], args[7])
        capacity = cluster.groups[args[0]].chip.memory_bytes
        for n in range(1, model.num_layers + 1):
            off = abs(fixed + n * per_layer - _memory(cm, args, n))
            assert off <= line_error(n, args[6], capacity) / 4  # a 4x margin to spare


@pytest.mark.parametrize("seed", [19, 28])
def test_a_candidate_left_out_of_the_ranking_does_not_pack(seed: int) -> None:
    """`FastSearch._packs` (by each group's segment sizes, cached) agrees with `assign` on
    every candidate: the ranking leaves out only candidates that are never plans."""
    cluster, model, job = random_case(seed, 16)
    search = FastSearch(Scorer(ShapeBuilder(CostModel(cluster, model, job), "zb-h1")), 4)
    groups = list(range(len(cluster.groups)))
    left_out = 0
    for bucket in (1, 2, 4):
        for _, cand in search._candidates(groups, bucket, bucket):
            placed = assign(cluster, [(s, [1] * n) for s, n in cand])
            assert search._packs(cand) == (placed is not None)
            left_out += placed is None
    assert left_out  # these clusters have candidates that do not pack
