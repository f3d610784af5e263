"""What the schedule step skips changes nothing (planner/schedules.py): a candidate under its
own schedule is not priced again, interleaving is not tried on a re-split it refuses for
the same reason, the zb-h1 search's own shape builder prices as a fresh one, and a variant
whose pipeline alone loses to the option's best so far is not priced."""

from __future__ import annotations

import pytest

from polychip.costmodel import CostModel
from polychip.plan.capabilities import RUNTIME
from polychip.planner.samples import random_case
from polychip.planner.schedules import (
    Option,
    _priced,
    _resplit,
    _ungrouped,
    options,
    step,
    variant,
)
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder


def _searched(seed: int) -> tuple[CostModel, dict[str, Scorer], Scored]:
    """A random small case searched under 1F1B and under ZB-H1's memory (as `auto` does)."""
    cluster, model, job = random_case(seed, 16)
    cm = CostModel(cluster, model, job)
    scorers, best = {}, None
    for schedule in ("1f1b", "zb-h1"):
        scorers[schedule] = Scorer(ShapeBuilder(cm, schedule))
        found = FastSearch(scorers[schedule], 4).run(list(range(len(cluster.groups))))
        best = better(best, found) if schedule == "1f1b" else best
    assert best is not None
    return cm, scorers, best


@pytest.mark.parametrize("seed", range(4))
def test_a_candidate_priced_again_under_its_own_schedule_is_itself(seed: int) -> None:
    cm, scorers, _ = _searched(seed)
    for scored in scorers["1f1b"].scored() + scorers["zb-h1"].scored():
        again, _ = _priced(cm, scored, scored.replicas, scored.classes, Option(scored.schedule))
        assert again == scored


@pytest.mark.parametrize("seed", range(4))
def test_interleaving_refuses_the_resplit_as_it_refuses_the_candidate(seed: int) -> None:
    cm, scorers, _ = _searched(seed)
    refused = 0
    for option in options("auto", None, RUNTIME, cm.model.num_layers)[0]:
        builder = ShapeBuilder(cm, option.schedule, option.virtual_stages)
        for scored in scorers["1f1b"].scored() + scorers["zb-h1"].scored():
            if not _ungrouped(scored.replicas, option):
                continue
            split = _resplit(cm, scored, builder)
            if split is not None:
                refused += 1
                got, why = _priced(cm, scored, *split, option)
                assert got is None and "not whole groups" in why
    assert refused  # the case arises


@pytest.mark.parametrize("seed", range(4))
def test_the_step_with_the_zb_searchs_builder_chooses_as_with_a_fresh_one(seed: int) -> None:
    cm, scorers, best = _searched(seed)
    opts = options("auto", None, RUNTIME, cm.model.num_layers)[0]
    pool = scorers["1f1b"].scored() + scorers["zb-h1"].scored()
    fresh = step(cm, pool, best, {}, opts)
    reused = step(cm, pool, best, {}, opts, {Option("zb-h1"): scorers["zb-h1"].builder})
    assert reused.best.replicas == fresh.best.replicas
    assert reused.best.tokens_per_s == fresh.best.tokens_per_s
    assert [(v.option, v.best and v.best.tokens_per_s, v.reason) for v in reused.verdicts] == [
        (v.option, v.best and v.best.tokens_per_s, v.reason) for v in fresh.verdicts]


@pytest.mark.parametrize("seed", range(4))
def test_the_pipeline_floor_never_exceeds_the_step_and_prunes_only_losers(seed: int) -> None:
    """`CostModel.pipeline_floor_s` is at most `evaluate`'s step under every option (with
    recompute too), so a variant `variant` skips against a beat is never `better` than it;
    and skipping happens (the test would pass vacuously otherwise)."""
    cm, scorers, best = _searched(seed)
    opts = options("auto", None, RUNTIME, cm.model.num_layers)[0]
    pool = scorers["1f1b"].scored() + scorers["zb-h1"].scored()
    skipped = 0
    for option in opts:
        builder = None if option == Option("1f1b") else ShapeBuilder(cm, option.schedule,
                                                                     option.virtual_stages)
        for scored in pool:
            full, _ = variant(cm, scored, option, builder)
            if full is not None:
                floor = cm.pipeline_floor_s(full.replicas, option.schedule,
                                            option.virtual_stages)
                assert floor <= full.cost.step_time_s * (1 + 1e-12)
            pruned, why = variant(cm, scored, option, builder, best)
            if full is not None and full.tokens_per_s > best.tokens_per_s * (1 + 1e-12):
                assert pruned is not None and pruned.tokens_per_s == full.tokens_per_s
            skipped += "slower than" in why
    assert skipped
