"""The schedule step (`planner/schedules.py`): the search's best candidates re-priced under
every schedule the runtime runs, the fastest that fits chosen and explained in the notes."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from polychip.costmodel import CostModel
from polychip.plan.capabilities import RUNTIME
from polychip.planner import plan_job, search_plans
from polychip.planner.schedules import Option, interleave_layers, options
from polychip.simulator import simulate
from polychip.spec.cluster import cluster_from_dict, load_cluster
from polychip.spec.errors import InfeasibleError, PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"
ZB = RUNTIME  # the runtime executes zb-h1 (runtime/backward.py)
NO_ZB = dataclasses.replace(RUNTIME, schedules=RUNTIME.schedules - {"zb-h1"})
NO_INTERLEAVING = dataclasses.replace(RUNTIME, schedules=frozenset({"1f1b", "zb-h1"}))
TWO_NODES = cluster_from_dict(
    {"nodes": [{"chip": "h800", "count": 2, "chips_per_node": 8, "nic_gbps": 400}]})
LLAMA7 = load_model("llama2-7b")
JOB = TrainingJob(32, 2048)  # few micro-batches per pipeline: a large 1F1B bubble


def _estimate_is_the_cost_models(plan) -> None:
    cost = CostModel(plan.cluster, plan.model, plan.job).evaluate(
        plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages)
    assert cost.feasible
    assert plan.estimate.tokens_per_s == pytest.approx(cost.tokens_per_s, rel=1e-12)


def test_auto_searches_what_the_runtime_runs_and_never_gpipe() -> None:
    opts, notes = options("auto", None, RUNTIME, 32)
    assert Option("gpipe") not in opts and Option("1f1b") in opts and Option("zb-h1") in opts
    assert [o.virtual_stages for o in opts if o.schedule == "interleaved-1f1b"] == [2, 4, 8]
    assert notes == []
    # a runtime without it: not searched, and said
    assert options("auto", None, NO_ZB, 32)[1] == [
        "zb-h1 not searched: polychip's runtime does not execute it (plan/capabilities.py)"]
    assert options("interleaved-1f1b", 3, RUNTIME, 32) == ([Option("interleaved-1f1b", 3)], [])
    assert options("gpipe", None, RUNTIME, 32) == ([Option("gpipe")], [])


@pytest.mark.parametrize("seed", range(40))
def test_interleaved_layer_counts_keep_the_total_and_every_stage(seed: int) -> None:
    rng = random.Random(seed)
    v = rng.choice([2, 3, 4])
    counts = [rng.randint(1, 12) for _ in range(rng.randint(1, 8))]
    got = interleave_layers(counts, v)
    if sum(counts) % v:
        assert got is None
    elif got is not None:
        assert sum(got) == sum(counts) and all(n % v == 0 and n >= v for n in got)
        assert all(abs(g - n) < 2 * v for g, n in zip(got, counts, strict=True))
    else:  # impossible only when every stage would need at least v layers
        assert len(counts) * v > sum(counts)


def test_auto_searches_zb_h1_under_its_own_memory_too() -> None:
    """ZB-H1 holds S micro-batches on every stage: the 1F1B search's shapes may not fit it,
    so auto also searches under its memory (as `--schedule zb-h1` does) and keeps the
    faster."""
    forced = plan_job(TWO_NODES, LLAMA7, JOB, schedule="zb-h1", capabilities=NO_INTERLEAVING)
    auto = plan_job(TWO_NODES, LLAMA7, JOB, capabilities=NO_INTERLEAVING)
    assert auto.estimate.tokens_per_s >= forced.estimate.tokens_per_s * (1 - 1e-12)


def test_zb_h1_closes_the_bubble_when_the_runtime_runs_it() -> None:
    one = plan_job(TWO_NODES, LLAMA7, JOB, schedule="1f1b")
    plan = plan_job(TWO_NODES, LLAMA7, JOB, capabilities=NO_INTERLEAVING)
    assert plan.schedule == "zb-h1" and plan.virtual_stages == 1
    assert plan.estimate.tokens_per_s > 1.1 * one.estimate.tokens_per_s
    _estimate_is_the_cost_models(plan)
    head = next(n for n in plan.notes if n.startswith("schedule zb-h1: bubble "))
    assert "(1F1B) -> " in head and "GiB on the first stage" in head
    assert "tokens/s over the best 1F1B plan" in head
    assert any(n.startswith("1f1b: ") and "tokens/s" in n for n in plan.notes)
    assert not any("runtime cannot train" in n for n in plan.notes)
    # the same search for a runtime without zb-h1: not a candidate, and says so
    plain = plan_job(TWO_NODES, LLAMA7, JOB, capabilities=NO_ZB)
    assert plain.schedule != "zb-h1" and any("zb-h1 not searched" in n for n in plain.notes)


def test_auto_picks_the_fastest_schedule_and_the_baselines_follow() -> None:
    plans = {s: plan_job(TWO_NODES, LLAMA7, JOB, schedule=s, capabilities=ZB)
             for s in ("1f1b", "zb-h1", "auto")}
    auto = plans["auto"]
    assert auto.estimate.tokens_per_s >= max(p.estimate.tokens_per_s for p in plans.values())
    _estimate_is_the_cost_models(auto)
    if auto.schedule == "interleaved-1f1b":
        v = auto.virtual_stages
        for rep in auto.replicas:
            assert rep.num_micro_batches % rep.num_stages == 0
            assert all(st.num_layers % v == 0 for st in rep.stages)
    # one chip type: the plan is that type's best alone, the baseline too
    best_single = auto.baselines["best_single_type"].tokens_per_s
    assert best_single == pytest.approx(auto.estimate.tokens_per_s, rel=1e-12)


def test_a_schedule_over_memory_is_rejected_with_its_figure() -> None:
    job = TrainingJob(512, 4096, allow_recompute=False)
    plan = plan_job(load_cluster(EXAMPLES / "h800-910b.yaml"), load_model("llama3-70b"), job)
    assert plan.schedule == "1f1b"
    rejected = [n for n in plan.notes
                if n.startswith("interleaved-1f1b v=") and " rejected: " in n and "memory" in n]
    assert rejected and "over memory by" in rejected[0] and " GiB" in rejected[0]


def test_forced_schedules() -> None:
    plan = plan_job(TWO_NODES, LLAMA7, JOB, schedule="interleaved-1f1b", virtual_stages=2)
    assert (plan.schedule, plan.virtual_stages) == ("interleaved-1f1b", 2)
    _estimate_is_the_cost_models(plan)
    zb = plan_job(TWO_NODES, LLAMA7, JOB, schedule="zb-h1")  # searched under its memory
    assert zb.schedule == "zb-h1"
    _estimate_is_the_cost_models(zb)
    assert not any("runtime cannot train" in n for n in zb.notes)
    unrun = plan_job(TWO_NODES, LLAMA7, JOB, schedule="zb-h1", capabilities=NO_ZB)
    assert any("runtime cannot train this plan: schedule = zb-h1" in n for n in unrun.notes)
    with pytest.raises(InfeasibleError, match="interleaved-1f1b v=7"):  # 32 layers: no 7s
        plan_job(TWO_NODES, LLAMA7, JOB, schedule="interleaved-1f1b", virtual_stages=7)
    with pytest.raises(PolychipError, match="--virtual-stages 2"):
        plan_job(TWO_NODES, LLAMA7, JOB, schedule="zb-h1", virtual_stages=2)


def test_reranking_replays_each_candidate_under_its_own_schedule() -> None:
    found = search_plans(TWO_NODES, LLAMA7, JOB, capabilities=ZB, simulate_top=3)
    assert {c.plan.schedule for c in found.ranking} - {"1f1b"}  # not only 1F1B replayed
    for c in found.ranking:
        again = simulate(c.plan)
        assert c.sim.step_time_s == pytest.approx(again.step_time_s, rel=1e-9)
        assert (c.plan.schedule, c.plan.virtual_stages) == (c.scored.schedule,
                                                            c.scored.virtual_stages)
    assert found.plan.schedule == found.ranking[0].plan.schedule


def test_a_plan_is_searched_again_under_auto_unless_it_was_1f1b_or_gpipe() -> None:
    from polychip.planner.schedules import replan_schedule

    assert [replan_schedule(s) for s in ("1f1b", "gpipe", "zb-h1", "interleaved-1f1b")] == [
        "1f1b", "gpipe", "auto", "auto"]
