"""The naive mixed baseline priced best bound first (`baselines.naive_mixed`) finds the
layout that pricing every layout in turn finds: the most tokens/s, ties to the first in
(TP, PP, order, micro-batch) order, recompute only where a layout does not fit without."""

from __future__ import annotations

from pathlib import Path

import pytest

from polychip.costmodel import CostModel
from polychip.planner.baselines import _layout, _naive_layouts, _quick_check, naive_mixed
from polychip.planner.samples import random_case
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[2]


def _in_turn(cm: CostModel, schedule: str) -> tuple[str, float] | None:
    """Every layout priced in order, the best kept (the reference)."""
    best = None
    for _, args, _ in _naive_layouts(cm, schedule):
        for recompute in sorted({args[-1], cm.job.allow_recompute}):
            again = (*args[:-1], recompute)
            dp = args[4]
            zero1 = cm.job.allow_zero1 and dp > 1
            if _quick_check(cm, _layout(*again), schedule, dp if zero1 else 1) is None:
                continue
            cost = cm.evaluate(_layout(*again), schedule, zero1)
            if cost.feasible:
                if best is None or cost.tokens_per_s > best[1]:
                    tp, pp, order, mb = args[2], args[3], args[5], args[8]
                    best = (f"TP{tp} x PP{pp} x DP{dp} ({order}), micro-batch {mb}"
                            + (", recompute" if recompute else ""), cost.tokens_per_s)
                break
    return best


@pytest.mark.parametrize("seed", range(8))
def test_best_bound_first_finds_the_layout_of_pricing_every_one(seed: int) -> None:
    cluster, model, job = random_case(seed, 16)
    cm = CostModel(cluster, model, job)
    got = naive_mixed(cm, "1f1b")
    want = _in_turn(cm, "1f1b")
    assert (got.layout, got.cost.tokens_per_s) == want if got is not None else want is None


def test_on_the_h800_910b_example() -> None:
    cm = CostModel(load_cluster(ROOT / "examples" / "clusters" / "h800-910b.yaml"),
                   load_model("llama3-70b"), TrainingJob(512, 4096))
    got = naive_mixed(cm, "1f1b")
    assert got is not None and (got.layout, got.cost.tokens_per_s) == _in_turn(cm, "1f1b")
