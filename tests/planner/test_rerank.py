"""`search_plans(simulate_top=K)`: the best candidates by the cost model, replayed in the
simulator, the fastest simulated chosen -- with the analytic figures kept analytic."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from polychip.costmodel import CostModel
from polychip.planner import plan_job, search_plans
from polychip.planner.rerank import differences, runs, shortlist
from polychip.planner.samples import SMALL8
from polychip.simulator import simulate
from polychip.spec.cluster import cluster_from_dict, load_cluster
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


@pytest.fixture(scope="module")
def case():
    cluster = load_cluster(EXAMPLES / "cpu-test.yaml")
    return cluster, load_model("tiny"), TrainingJob(global_batch=16, seq_len=64)


@pytest.fixture(scope="module")
def found(case):
    return search_plans(*case, simulate_top=5)


def test_ranking_is_by_simulated_tokens_and_every_figure_is_a_real_replay(found) -> None:
    ranking = found.ranking
    types = {g.chip.name for g in found.plan.cluster.groups}
    assert 5 <= len(ranking) <= 5 + len(types)  # the top 5 plus each chip type alone
    sims = [c.simulated_tokens_per_s for c in ranking]
    assert sims == sorted(sims, reverse=True)
    for c in ranking:  # each simulated figure is what the simulator says of that plan
        assert simulate(c.plan).tokens_per_s == pytest.approx(c.simulated_tokens_per_s, rel=1e-12)
        assert c.plan.estimate.source == "analytic"
        assert c.plan.estimate.tokens_per_s == pytest.approx(c.analytic_tokens_per_s, rel=1e-12)
    by_analytic = sorted(ranking, key=lambda c: c.analytic_rank)
    assert [c.analytic_rank for c in by_analytic] == list(range(1, len(ranking) + 1))
    analytic = [c.analytic_tokens_per_s for c in by_analytic]
    assert analytic == sorted(analytic, reverse=True)
    assert len({c.plan.replicas for c in ranking}) == len(ranking)  # distinct plans
    alone = [c for c in ranking if len({s.chip for r in c.plan.replicas for s in r.stages}) == 1]
    assert {c.plan.replicas[0].stages[0].chip for c in alone} == types


def test_chosen_plan_is_the_fastest_simulated_with_an_analytic_estimate(case, found) -> None:
    plan, chosen = found.plan, found.ranking[0]
    assert plan.replicas == chosen.plan.replicas and plan.zero1 == chosen.plan.zero1
    assert plan.estimate.source == "analytic"  # comparable with the (analytic) baselines
    cost = CostModel(*case).evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages)
    assert plan.estimate.tokens_per_s == pytest.approx(cost.tokens_per_s, rel=1e-12)
    note = [n for n in plan.notes if n.startswith("chosen by simulated step")]
    assert len(note) == 1 and f"{chosen.simulated_tokens_per_s:,.0f}" in note[0]


def test_analytic_favourite_is_what_plan_job_picks(case, found) -> None:
    first = min(found.ranking, key=lambda c: c.analytic_rank)
    plain = plan_job(*case)
    assert first.analytic_tokens_per_s == pytest.approx(plain.estimate.tokens_per_s, rel=1e-12)
    assert search_plans(*case).ranking == ()  # no re-ranking unless asked
    assert search_plans(*case).plan == plain


def test_reranking_changes_the_pick_where_a_middle_stage_shares_its_nic() -> None:
    """Four H20 on one node and two H800 on two nodes behind 12 Gbit/s NICs. The cost
    model's favourite is one pipeline h800 -> h800 -> h20 -> h20 (2 + 4 + 1 + 1 layers, the
    H20 stages TP 2): its closed form gives each boundary a whole NIC, but the second H800's
    NIC carries both of its boundaries (activations in from the first H800, gradients in
    from the H20 node), and with stages of 17, 33, 18 and 35 ms there is no slack to hide two
    22 ms transfers per micro-batch. Replayed, it is >10 % slower; a candidate that leaves
    slack wins."""
    cluster = cluster_from_dict(
        {
            "name": "shared-nic",
            "nodes": [
                {"chip": "h20", "count": 1, "chips_per_node": 4, "nic_gbps": 100},
                {"chip": "h800", "count": 2, "chips_per_node": 1, "nic_gbps": 12},
            ],
            "network": {"kind": "roce", "latency_us": 10},
        }
    )
    found = search_plans(cluster, SMALL8, TrainingJob(global_batch=16, seq_len=8192),
                         simulate_top=5, schedule="1f1b")  # the story is 1F1B's closed form
    chosen = found.ranking[0]
    first = min(found.ranking, key=lambda c: c.analytic_rank)
    assert chosen is not first
    assert [s.chip for s in first.plan.replicas[0].stages] == ["h800", "h800", "h20", "h20"]
    assert first.simulated_tokens_per_s < 0.9 * first.analytic_tokens_per_s
    assert chosen.simulated_tokens_per_s > 1.05 * first.simulated_tokens_per_s
    assert chosen.analytic_tokens_per_s < first.analytic_tokens_per_s
    note = next(n for n in found.plan.notes if n.startswith("chosen by simulated step"))
    assert f"{first.simulated_tokens_per_s:,.0f}" in note and "stay analytic" in note


def test_shortlist_dedupes_keeps_always_and_refuses_zero(found) -> None:
    scored = [c.scored for c in found.ranking]
    top2 = shortlist(scored + scored, 2)
    fastest = sorted((s.tokens_per_s for s in scored), reverse=True)[:2]
    assert [s.tokens_per_s for s in top2] == fastest
    slowest = min(scored, key=lambda s: s.tokens_per_s)
    with_always = shortlist(scored, 1, [slowest, slowest])
    assert len(with_always) == 2 and with_always[-1] is slowest
    with pytest.raises(ValueError, match="top must be >= 1"):
        shortlist(scored, 0)


def test_negative_simulate_top_is_a_clear_error(case) -> None:
    with pytest.raises(PolychipError, match="simulate_top -1 must be >= 0"):
        search_plans(*case, simulate_top=-1)


def test_rows_of_different_candidates_read_differently(found) -> None:
    ranking = list(found.ranking)
    labels = [c.label for c in ranking]
    differs = differences(ranking)
    rows = [f"{a} {b}" for a, b in zip(labels, differs, strict=True)]
    keys = {c.plan.replicas for c in ranking}
    assert len(keys) == len(ranking) and len(set(rows)) == len(ranking)
    assert any(a == b for a, b in itertools.combinations(labels, 2))  # the label alone did not
    shown = [dict(part.split(" ", 1) for part in text.split("; ")) for text in differs]
    for key in shown[0]:  # only what differs among the candidates is shown
        assert len({row[key] for row in shown}) > 1


def test_differences_name_layer_split_micro_batches_and_replicas() -> None:
    from types import SimpleNamespace

    from tests.simulator.plans import MIXED, make_plan

    one = make_plan(MIXED, [[(12, 0, 4), (20, 2, 8)]], model="llama2-7b", micro_batches=8)
    two = make_plan(MIXED, [[(14, 0, 4), (18, 2, 8)]], model="llama2-7b", micro_batches=8)
    three = make_plan(MIXED, [[(12, 0, 4), (20, 2, 8)]], model="llama2-7b", micro_batches=8,
                      micro_batch_size=2)
    four = make_plan(MIXED, [[(32, 1, 8)], [(32, 4, 8)]], model="llama2-7b", micro_batches=4)
    got = differences([SimpleNamespace(plan=p) for p in (one, two, three, four)])
    assert got[0].startswith("replicas 1; layers 12/20; micro-batches 8x1; batch 8")
    assert "layers 14/18" in got[1] and "micro-batches 8x2" in got[2]
    assert "replicas 2" in got[3] and "layers 32" in got[3]
    assert len(set(got)) == 4
    assert runs([5, 5, 5, 6, 5]) == "5×3/6/5"
