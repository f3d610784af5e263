"""The fast planner's estimate (`estimate.Estimator`) ranks candidates before the exact score:
where it strays from `CostModel.evaluate`, the shortlist fills with the wrong candidates.
Checked on every candidate a search scores exactly."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from polychip.costmodel import CostModel
from polychip.planner.scoring import Scorer
from polychip.planner.search import FastSearch
from polychip.planner.shapes import ShapeBuilder
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def _errors(cluster: str, batch: int, schedule: str, one_class: bool = False) -> list[float]:
    """|estimate / exact - 1| of the 40 best-estimated candidates of the search over all
    chips that are plans (``one_class``: only those of one shape whose replicas split the
    batch evenly)."""
    cm = CostModel(load_cluster(EXAMPLES / cluster), load_model("llama3-70b"),
                   TrainingJob(batch, 4096))
    scorer = Scorer(ShapeBuilder(cm, schedule))
    search = FastSearch(scorer, 16)
    search.run(list(range(len(cm.cluster.groups))))
    out = []
    for estimate, cand in search._ranked(search.pool, everything=True)[:40]:
        s = scorer.score(cand)
        if s is None or (one_class and (len(s.classes) > 1 or len(set(s.classes[0][1])) > 1)):
            continue
        out.append(abs(estimate / s.tokens_per_s - 1))
    return out


@pytest.mark.parametrize("schedule", ["1f1b", "zb-h1"])
def test_estimates_track_the_cost_model_on_a_large_mixed_cluster(schedule: str) -> None:
    """1,024 chips of four types, replicas of different shapes cut the layers differently:
    their stages wait on each other's gradient syncs (a per-device sum had the estimates
    5 % (1F1B) and 11 % (ZB-H1, timed with 1F1B's closed form) off at the median)."""
    errors = sorted(_errors("mix-1024.yaml", 1024, schedule))
    assert len(errors) >= 20
    assert statistics.median(errors) <= 0.02
    assert errors[int(0.9 * len(errors))] <= 0.06


@pytest.mark.parametrize("schedule", ["1f1b", "zb-h1"])
def test_one_even_class_is_estimated_as_the_cost_model_prices_it(schedule: str) -> None:
    """Identical replicas sharing the batch evenly: the estimate's pipeline is the shape's
    exact span, its sync the cost model's order of segments; only the closed form of the
    hierarchical all-reduce stands in for the cost model's ring pieces."""
    errors = _errors("h800-910b.yaml", 512, schedule, one_class=True)
    assert errors
    assert max(errors) <= 0.005
