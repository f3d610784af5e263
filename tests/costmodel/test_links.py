"""Links between nodes under a plan: a chip's share of its node's NIC counts only the chips
the plan uses there; measured links between node groups replace the NIC figure."""

from __future__ import annotations

import pytest

from polychip.costmodel.comm import LinkKind, ring_allreduce_time_s
from polychip.costmodel.estimate import CostModel
from polychip.costmodel.links import chips_in_use
from polychip.plan.plan import Replica, Stage
from polychip.spec.cluster import Cluster, cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

TINY = load_model("tiny")  # 4 heads, 2 kv heads: TP 2 divides both
NIC = 400e9 / 8  # 400 Gbit/s


def _cluster(links: list | None = None, chips_per_node: int = 8) -> Cluster:
    nodes = [
        {"chip": "h800", "count": 2, "chips_per_node": chips_per_node, "nic_gbps": 400,
         "label": "rack-a"},
        {"chip": "h800", "count": 2, "chips_per_node": chips_per_node, "nic_gbps": 400,
         "label": "rack-b"},
        {"chip": "910b", "count": 1, "chips_per_node": chips_per_node, "nic_gbps": 200},
    ]  # fmt: skip
    return cluster_from_dict(
        {"nodes": nodes, "network": {"latency_us": 10}, "links": links or []}
    )


def _cm(cluster: Cluster) -> CostModel:
    return CostModel(cluster, TINY, TrainingJob(global_batch=64, seq_len=128))


def _dp(nodes: tuple[int, ...], per_node: int, tp: int) -> tuple[Replica, ...]:
    """`per_node` single-stage replicas of TP `tp` on each node, chips taken in order."""
    reps = []
    for node in nodes:
        for i in range(per_node):
            devs = tuple(range(i * tp, (i + 1) * tp))
            reps.append(Replica((Stage(0, TINY.num_layers, node, devs, "h800"),), 4, 1))
    return tuple(reps)


# ---- a chip's share of its node's NIC -------------------------------------------------------


def test_chips_in_use_counts_distinct_chips_per_node() -> None:
    pipeline = Replica((Stage(0, 2, 0, (2,), "h800"), Stage(2, 4, 0, (3,), "h800")), 4, 1)
    reps = (*_dp((0, 1), 1, 2), pipeline)
    assert chips_in_use(reps) == {0: 4, 1: 2}


def test_a_plan_using_2_of_8_chips_gets_4x_the_share() -> None:
    cm = _cm(_cluster())
    assert cm.device_nic_bw(0) == pytest.approx(NIC / 8)  # unbound: all 8 chips talk
    two = cm.under(_dp((0, 1), 1, 2))  # one TP-2 replica on each node: 2 of 8 chips
    assert two.device_nic_bw(0) == pytest.approx(NIC / 2) == 4 * cm.device_nic_bw(0)
    full = cm.under(_dp((0, 1), 4, 2))  # four TP-2 replicas per node: every chip
    assert full.device_nic_bw(1) == pytest.approx(NIC / 8)
    assert cm.chips_used is None  # binding makes a view; the model itself is unchanged
    assert cm.under(_dp((0, 1), 1, 2)).device_nic_bw(0) == two.device_nic_bw(0)


def test_gradient_sync_of_2_of_8_chips_runs_at_a_quarter_of_the_nic() -> None:
    cm = _cm(_cluster())
    reps = _dp((0, 1), 1, 2)
    bw, lat = NIC / 2, 10e-6  # each chip: half the NIC (2 chips of the node talk)

    def ar(params: int) -> float:  # every TP rank all-reduces its half of the fp32 gradient
        return ring_allreduce_time_s(cm.job.reduce_bytes * params / 2, 2, bw, lat)

    expected = ar(TINY.num_layers * TINY.layer_params)
    expected += ar(TINY.embedding_params) + ar(TINY.head_params)
    assert cm.dp_sync_time_s(reps) == pytest.approx(expected, rel=1e-12)
    assert cm.evaluate(reps).dp_sync_s == pytest.approx(expected, rel=1e-12)
    # every chip of the nodes used: each has an eighth of the NIC, the sync is slower
    assert cm.dp_sync_time_s(_dp((0, 1), 4, 2)) > expected
    # chips the plan leaves idle do not matter: the same plan on 2-chip nodes
    small = _cm(_cluster(chips_per_node=2))
    assert small.dp_sync_time_s(reps) == pytest.approx(expected, rel=1e-12)


# ---- measured links -----------------------------------------------------------------------


LINKS = [
    {"between": ["rack-a", "rack-b"], "gbps": 100, "latency_us": 30},
    {"between": ["rack-a", "rack-a"], "gbps": 200},
    {"between": ["rack-b", 2], "gbps": 40, "latency_us": 50},
]


def test_a_measured_link_replaces_the_nic_figure() -> None:
    cm = _cm(_cluster(LINKS))
    plain = _cm(_cluster())
    assert plain.link(0, 2) == (LinkKind.INTER_NODE, NIC, pytest.approx(10e-6))
    assert cm.link(0, 2) == (LinkKind.INTER_NODE, 12.5e9, pytest.approx(30e-6))  # a -> b
    assert cm.link(2, 0) == cm.link(0, 2)
    assert cm.link(0, 1) == (LinkKind.INTER_NODE, 25e9, pytest.approx(10e-6))  # inside a
    assert cm.link(2, 3) == plain.link(2, 3)  # inside rack b: no link declared
    assert cm.link(3, 4) == (LinkKind.BRIDGE, 5e9, pytest.approx(50e-6))  # b -> 910B
    assert cm.link(0, 4) == plain.link(0, 4)  # a -> 910B: the slower NIC
    assert cm.link(0, 0) == plain.link(0, 0)  # inside a node: the scale-up link
    n = 64e6
    assert cm.transfer_time_s(0, 2, n) == pytest.approx(n / 12.5e9 + 30e-6)
    assert cm.transfer_time_s(3, 4, n) == pytest.approx(n / 5e9 + 2 * n / 25e9 + 50e-6)
    assert cm.measured_link_bw(1, 3) == 12.5e9 and cm.measured_link_bw(2, 3) is None
    assert cm.measured_link_bw(0, 0) is None


def test_a_slow_link_slows_the_pipeline_that_crosses_it() -> None:
    across = Replica((Stage(0, 2, 0, (0,), "h800"), Stage(2, 4, 2, (0,), "h800")), 8, 1)
    slow, plain = _cm(_cluster(LINKS)), _cm(_cluster())
    gap = slow.pipeline_time_s(across, "gpipe")[0] - plain.pipeline_time_s(across, "gpipe")[0]
    n = slow.activation_bytes(1)
    assert slow.boundary_time_s(across, 0) == pytest.approx(n / 12.5e9 + 30e-6)
    per_transfer = slow.boundary_time_s(across, 0) - plain.boundary_time_s(across, 0)
    # fill and drain cross the boundary twice (the steady beat may grow too)
    assert gap >= 2 * per_transfer * (1 - 1e-9) > 0
