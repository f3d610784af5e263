"""The simulator's network under a plan: a node's NIC is shared only by the chips the plan
uses on it (as the cost model's NIC share says), and measured links between node groups
cap the flows between their nodes."""

from __future__ import annotations

import pytest

from polychip.costmodel import CostModel
from polychip.simulator import simulate

from .plans import FixedTimes, cluster, make_plan


def _dp_plan(chips_per_node: int, per_node: int):
    """`per_node` single-stage TP-2 replicas of llama2-7b on each of two h800 nodes."""
    cl = cluster({"chip": "h800", "count": 2, "chips_per_node": chips_per_node,
                  "nic_gbps": 400})  # fmt: skip
    replicas = [[(32, node, 2)] for node in (0, 1) for _ in range(per_node)]
    return make_plan(cl, replicas, model="llama2-7b", micro_batches=2, seq_len=2048,
                     schedule="gpipe")  # fmt: skip


def _analytic(plan):
    return CostModel(plan.cluster, plan.model, plan.job).evaluate(plan.replicas, plan.schedule)


def test_a_plan_using_2_of_8_chips_syncs_at_its_share_analytic_and_simulated() -> None:
    plan = _dp_plan(8, 1)  # 2 of each node's 8 chips
    sim, ana = simulate(plan, overlap_grad_sync=False), _analytic(plan)
    assert sim.dp_sync_s == pytest.approx(ana.dp_sync_s, rel=1e-9)
    # the 6 idle chips change nothing: the same plan on nodes of 2 chips
    small = _dp_plan(2, 1)
    assert _analytic(small).dp_sync_s == pytest.approx(ana.dp_sync_s, rel=1e-12)
    assert simulate(small, overlap_grad_sync=False).dp_sync_s == pytest.approx(
        sim.dp_sync_s, rel=1e-9
    )
    # each chip's share is half the NIC: 4x the eighth it was charged before
    bound = CostModel(plan.cluster, plan.model, plan.job).under(plan.replicas)
    assert bound.device_nic_bw(0) == pytest.approx(4 * 400e9 / 8 / 8)


def test_filling_the_nodes_shares_the_nic_eight_ways() -> None:
    # (how the replay's ring, which crosses each NIC once, agrees with the closed form on
    # many members per node is the gradient-sync work's, not the NIC share's)
    plan = _dp_plan(8, 4)  # four TP-2 replicas per node: all 8 chips
    bound = CostModel(plan.cluster, plan.model, plan.job).under(plan.replicas)
    assert bound.device_nic_bw(1) == pytest.approx(400e9 / 8 / 8)
    assert _analytic(plan).dp_sync_s > _analytic(_dp_plan(8, 1)).dp_sync_s


LINKED = cluster(
    {"chip": "h800", "count": 2, "chips_per_node": 8, "nic_gbps": 100, "label": "a"},
    {"chip": "h800", "count": 1, "chips_per_node": 8, "nic_gbps": 100, "label": "b"},
    latency_us=10.0,
)


def _linked(gbps: float, latency_us: float | None = None):
    from polychip.spec.cluster import cluster_from_dict, cluster_to_dict

    link = {"between": ["a", "b"], "gbps": gbps}
    if latency_us is not None:
        link["latency_us"] = latency_us
    return cluster_from_dict(cluster_to_dict(LINKED) | {"links": [link]})


def test_a_lone_transfer_over_a_measured_link_takes_the_cost_models_time() -> None:
    cl = _linked(20, latency_us=40)
    plan = make_plan(cl, [[(16, 0, 1), (16, 2, 1)]], model="llama2-7b", micro_batches=1,
                     seq_len=2048)  # fmt: skip
    cm = FixedTimes(plan, 0.001, 0.002)
    n = cm.activation_bytes(1)
    assert cm.transfer_time_s(0, 2, n) == pytest.approx(n / 2.5e9 + 40e-6)
    result = simulate(plan, cost_model=cm)
    assert result.step_time_s == pytest.approx(32 * 0.003 + 2 * cm.transfer_time_s(0, 2, n),
                                               rel=1e-12)  # fmt: skip


def test_flows_between_one_pair_of_nodes_share_its_link() -> None:
    """Two pipelines from node 0 to node 2 over a 20 Gbit/s link (the NICs give 50 each):
    the link, not the NIC, sets their rate -- half of it each."""
    plan = make_plan(
        _linked(20), [[(16, 0, 1), (16, 2, 1)]] * 2, model="llama2-7b", micro_batches=1,
        seq_len=2048,
    )  # fmt: skip
    cm = FixedTimes(plan, 0.001, 0.002)
    n = cm.activation_bytes(1)
    shared = 2 * (10e-6 + 2 * n / 2.5e9)  # there and back, each at half the link
    for dedupe in (True, False):
        result = simulate(plan, cost_model=cm, dedupe_replicas=dedupe, overlap_grad_sync=False)
        assert result.pipeline_s == pytest.approx(32 * 0.003 + shared, rel=1e-12)
    # node 1 -> node 2 does not cross the 0 -> 2 link: two pipelines from different nodes
    # each have the link of their own pair of nodes
    apart = make_plan(
        _linked(20), [[(16, 0, 1), (16, 2, 1)], [(16, 1, 1), (16, 2, 1)]], model="llama2-7b",
        micro_batches=1, seq_len=2048,
    )  # fmt: skip
    result = simulate(apart, cost_model=FixedTimes(apart, 0.001, 0.002), overlap_grad_sync=False)
    assert result.pipeline_s == pytest.approx(32 * 0.003 + 2 * (10e-6 + n / 2.5e9), rel=1e-12)
