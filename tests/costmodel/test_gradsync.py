"""Gradient sync priced from the collectives' description, computed by hand: rings that
cross a node's NIC once, shards bridged by every rank, TP pieces sharing a NIC, ZeRO-1."""

from __future__ import annotations

import pytest

from polychip.costmodel.comm import ring_allreduce_time_s
from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.costmodel.estimate import CostModel
from polychip.costmodel.gradsync import segment_hops, step_rates
from polychip.plan.plan import Replica, Stage
from polychip.plan.segments import segments_of
from polychip.spec.cluster import Cluster, cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec, load_model

TINY = load_model("tiny")
LAT, HOST = 10e-6, 25e9
NIC_400 = 50e9  # 400 Gbit/s, a whole node's NIC
H800_LINK = 200e9  # one direction of the chip's scale-up link


def _cluster(*nodes: tuple[str, int, float]) -> Cluster:
    return cluster_from_dict({
        "nodes": [{"chip": c, "count": n, "chips_per_node": 8, "nic_gbps": g}
                  for c, n, g in nodes],
        "network": {"kind": "roce", "latency_us": 10, "host_copy_gbps": 25}})


def _cm(cluster: Cluster, model: ModelSpec = TINY, **job: object) -> CostModel:
    return CostModel(cluster, model, TrainingJob(global_batch=8, seq_len=128, **job))  # type: ignore[arg-type]


def _whole(node: int, chip: str = "h800", devs: tuple[int, ...] = (0,)) -> Replica:
    return Replica((Stage(0, TINY.num_layers, node, devs, chip),), 4, 1)


SEGMENTS = (TINY.head_params, TINY.num_layers * TINY.layer_params, TINY.embedding_params)


def test_two_replicas_on_two_nodes_all_reduce_over_the_whole_nic() -> None:
    cm = _cm(_cluster(("h800", 2, 400)))
    expected = sum(ring_allreduce_time_s(4.0 * n, 2, NIC_400, LAT) for n in SEGMENTS)  # fp32
    assert cm.dp_sync_time_s((_whole(0), _whole(1))) == pytest.approx(expected)
    assert cm.dp_sync_time_s((_whole(0),)) == 0.0
    bf16 = _cm(_cluster(("h800", 2, 400)), grad_reduce_dtype="bf16")
    assert bf16.dp_sync_time_s((_whole(0), _whole(1))) == pytest.approx(
        sum(ring_allreduce_time_s(2.0 * n, 2, NIC_400, LAT) for n in SEGMENTS))


def test_inside_one_node_the_ring_uses_the_scale_up_link() -> None:
    cm = _cm(_cluster(("h800", 1, 400)))
    reps = (_whole(0, devs=(0,)), _whole(0, devs=(1,)))
    expected = sum(ring_allreduce_time_s(4.0 * n, 2, H800_LINK, INTRA_NODE_LATENCY_S)
                   for n in SEGMENTS)
    assert cm.dp_sync_time_s(reps) == pytest.approx(expected)


def test_a_ring_over_two_nodes_crosses_each_nic_once() -> None:
    """Eight replicas, four per node: the ring visits node 0's chips, then node 1's; only
    two of its eight hops cross a NIC, one per direction, each with the whole NIC."""
    cm = _cm(_cluster(("h800", 2, 400)))
    reps = tuple(_whole(n, devs=(d,)) for n in (0, 1) for d in range(4))
    layers = segments_of(reps, TINY)[1]
    (name, hops), = segment_hops(cm, reps, layers, "all-reduce", 4.0)
    assert name == "island all-reduce" and len(hops) == 8
    crossing = [h for h in hops if h.src_node != h.dst_node]
    assert [(h.src, h.dst) for h in crossing] == [(3, 4), (7, 0)]
    assert step_rates(hops) == [NIC_400 if h.src_node != h.dst_node else H800_LINK for h in hops]
    n = 4.0 * TINY.num_layers * TINY.layer_params
    assert cm.segment_sync_time_s(reps, layers) == pytest.approx(
        2 * 7 / 8 * n / NIC_400 + 14 * LAT)


def test_across_islands_every_rank_bridges_its_own_shard() -> None:
    """h800 on nodes 0 and 1 (one island of two), a 910B on node 2 (an island of one): the
    h800 pair reduce-scatters, each h800 bridges its half with the 910B (which bridges all
    of it, through its one NIC: two hops share each side), then the pair all-gathers."""
    cm = _cm(_cluster(("h800", 2, 400), ("910b", 1, 200)))
    reps = (_whole(0), _whole(1), _whole(2, "ascend-910b"))
    head = segments_of(reps, TINY)[0]
    steps = segment_hops(cm, reps, head, "all-reduce", 4.0)
    assert [name for name, _ in steps] == [
        "island reduce-scatter", "bridge all-reduce", "island all-gather"]
    bridge = steps[1][1]
    assert sorted((h.src, h.dst) for h in bridge) == [(0, 2), (1, 2), (2, 0), (2, 1)]
    assert step_rates(bridge) == [25e9 / 2] * 4  # two hops on each side of the 910B's NIC
    n = 4.0 * TINY.head_params
    inside = n / 2 / NIC_400 + LAT  # each sends its other half once
    nic_910b = 25e9  # 200 Gbit/s: the bridge's slower side
    # each pair: copy the half to host and back, send half of it, two hops per 910B side
    cross = 2 * LAT + 2 * (n / 2) / HOST + (n / 2) * 2 / nic_910b
    assert cm.segment_sync_time_s(reps, head) == pytest.approx(2 * inside + cross)


def test_tp_pieces_share_the_nic_of_their_node() -> None:
    """A TP-2 stage meets a TP-1 stage: two pieces, each half the segment, both through
    node 0's and node 1's NIC at once: as long as the whole segment through one NIC."""
    cm = _cm(_cluster(("h800", 2, 400)))
    reps = (_whole(0, devs=(0, 1)), _whole(1))
    emb = segments_of(reps, TINY)[-1]
    n = 4.0 * TINY.embedding_params
    assert cm.segment_sync_time_s(reps, emb) == pytest.approx(n / NIC_400 + 2 * LAT)


def test_uneven_stage_boundaries_and_a_tied_heads_embedding_copy() -> None:
    tied = ModelSpec("tied", 4, 64, 4, 2, 176, 256, tie_embeddings=True)
    cm = _cm(_cluster(("h800", 4, 400)), model=tied)
    reps = tuple(Replica((Stage(0, 1, 2 * r, (0,), "h800"), Stage(1, 4, 2 * r + 1, (0,), "h800")),
                         4, 1) for r in range(2))
    segs = segments_of(reps, tied)
    assert [s.name for s in segs] == ["head", "1:4", "0:1", "emb"]
    assert segs[0].num_params(tied) == tied.head_params + tied.embedding_params

    def ring(params: float) -> float:
        return ring_allreduce_time_s(4.0 * params, 2, NIC_400, LAT)

    last = ring(tied.head_params + tied.embedding_params) + ring(3 * tied.layer_params)
    # after both pipelines, the slower of the two stages
    assert cm.dp_sync_time_s(reps, overlap=False) == pytest.approx(last)


def test_zero1_reduce_scatters_gradients_and_all_gathers_16_bit_parameters() -> None:
    cm = _cm(_cluster(("h800", 2, 400)))
    reps = (_whole(0), _whole(1))
    layers = segments_of(reps, TINY)[1]
    n = TINY.num_layers * TINY.layer_params
    half = 1 / 2 * 4.0 * n / NIC_400 + LAT  # fp32 gradients: each sends its other half
    gather = 1 / 2 * 2.0 * n / NIC_400 + LAT  # bf16 parameters
    assert cm.segment_sync_time_s(reps, layers, zero1=True) == pytest.approx(half + gather)
