"""What lets the planner scale changes no plan: exact bounds prune only candidates that
cannot win, and the cheaper bookkeeping finds the same plans (docs/planner.md, "How the
search scales")."""

from __future__ import annotations

import pytest

from polychip.costmodel import CostModel
from polychip.planner.samples import random_case
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
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
