"""Transfers: the cost model's time when alone, fair shares of a NIC when not."""

from __future__ import annotations

import pytest

from polychip.costmodel import LinkKind
from polychip.simulator import simulate

from .plans import FixedTimes, cluster, make_plan

H800 = {"chip": "h800", "count": 3, "chips_per_node": 8, "nic_gbps": 100}
ASCEND = {"chip": "ascend-910b", "count": 1, "chips_per_node": 8, "nic_gbps": 100}
CL = cluster(H800, ASCEND, latency_us=10.0)


def one_micro_batch(stages, replicas=1, **kw):
    plan = make_plan(
        CL, [stages] * replicas, model="llama2-7b", micro_batches=1, seq_len=2048, **kw
    )
    return plan, FixedTimes(plan, 0.001, 0.002)  # per layer


@pytest.mark.parametrize(
    ("a", "b", "kind"),
    [(0, 0, LinkKind.INTRA_NODE), (0, 1, LinkKind.INTER_NODE), (0, 3, LinkKind.BRIDGE)],
)
def test_a_lone_transfer_takes_the_cost_models_time(a, b, kind):
    plan, cm = one_micro_batch([(16, a, 1), (16, b, 1)])
    result = simulate(plan, cost_model=cm)
    compute = 32 * 0.003
    n = cm.activation_bytes(1)
    assert cm.link(a, b)[0] is kind
    expected = compute + 2 * cm.transfer_time_s(a, b, n)  # activations there, gradient back
    assert result.step_time_s == pytest.approx(expected, rel=1e-12)
    (link,) = result.links
    assert link.kind is kind and link.transfers == 2 and link.n_bytes == 2 * n


def test_pipelines_crossing_one_nic_share_it_fairly():
    """Stage 0 of two pipelines on node 0, their stage 1 on nodes 1 and 2: node 0's NIC
    carries two transfers at once, each at half its bandwidth."""
    plan = make_plan(
        CL,
        [[(16, 0, 1), (16, 1, 1)], [(16, 0, 1), (16, 2, 1)]],
        model="llama2-7b",
        micro_batches=1,
        seq_len=2048,
    )
    cm = FixedTimes(plan, 0.001, 0.002)
    n, bw = cm.activation_bytes(1), CL.groups[0].nic_bw_bytes_per_s
    shared = 2 * (10e-6 + 2 * n / bw)  # both directions pass node 0's NIC
    for dedupe in (True, False):
        result = simulate(plan, cost_model=cm, dedupe_replicas=dedupe, overlap_grad_sync=False)
        assert result.pipeline_s == pytest.approx(32 * 0.003 + shared, rel=1e-12)
    assert len(result.recording.classes) == 2  # dedupe off: each replica replayed


def test_one_representative_loads_the_nic_like_all_its_class_mates():
    plan = make_plan(
        CL,
        [[(16, 0, 1), (16, 1, 1)]] * 4,  # four alike pipelines, node 0 -> node 1
        model="llama2-7b",
        micro_batches=3,
        seq_len=2048,
    )
    cm = FixedTimes(plan, 0.001, 0.002)
    once = simulate(plan, cost_model=cm)
    every = simulate(plan, cost_model=cm, dedupe_replicas=False)
    assert len(once.recording.classes) == 1 and len(every.recording.classes) == 4
    assert once.step_time_s == pytest.approx(every.step_time_s, rel=1e-12)
    assert once.pipeline_s == pytest.approx(every.pipeline_s, rel=1e-12)
    single = make_plan(
        CL, [[(16, 0, 1), (16, 1, 1)]], model="llama2-7b", micro_batches=3, seq_len=2048
    )
    alone = simulate(single, cost_model=FixedTimes(single, 0.001, 0.002))
    assert once.pipeline_s > alone.pipeline_s  # the shared NIC slows every transfer
    assert [link.transfers for link in once.links] == [link.transfers for link in every.links]
