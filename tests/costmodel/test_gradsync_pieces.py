"""The gradient sync priced from one piece equals the sum over every piece's hops: random
mixed-vendor plans (TP degrees that differ between holders, stages sharing nodes, islands of
unequal size), every segment, every kind of collective, float for float."""

from __future__ import annotations

import itertools
import random

import pytest

from polychip.costmodel.estimate import CostModel
from polychip.costmodel.gradsync import segment_hops, steps_time_s
from polychip.costmodel.piecesync import kind_figures
from polychip.plan.plan import Replica, Stage
from polychip.plan.segments import segments_of
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

MODEL = load_model("tiny")
CLUSTER = cluster_from_dict({
    "nodes": [{"chip": "h800", "count": 3, "chips_per_node": 8, "nic_gbps": 400},
              {"chip": "ascend-910b", "count": 3, "chips_per_node": 8, "nic_gbps": 200},
              {"chip": "a100-80g", "count": 2, "chips_per_node": 4, "nic_gbps": 200}],
    "network": {"kind": "roce", "latency_us": 10, "host_copy_gbps": 25}})


def random_replicas(rng: random.Random) -> tuple[Replica, ...]:
    """Replicas of 1-3 stages at random TP degrees, packed onto free chips of random nodes."""
    free = {n.index: list(range(n.group.chips_per_node)) for n in CLUSTER.nodes}
    replicas = []
    for _ in range(rng.randint(2, 7)):
        cuts = sorted(rng.sample(range(1, MODEL.num_layers), rng.randint(0, 2)))
        bounds = [0, *cuts, MODEL.num_layers]
        stages = []
        for a, b in itertools.pairwise(bounds):
            tp = rng.choice([1, 2, 4])
            nodes = [n for n, f in free.items() if len(f) >= tp]
            if not nodes:
                break
            node = rng.choice(nodes)
            devs, free[node] = tuple(free[node][:tp]), free[node][tp:]
            stages.append(Stage(a, b, node, devs, CLUSTER.nodes[node].group.chip.name))
        if len(stages) == len(bounds) - 1:
            replicas.append(Replica(tuple(stages), 2, 1))
    return tuple(replicas)


@pytest.mark.parametrize("seed", range(40))
def test_one_piece_prices_the_sync_as_every_piece_does(seed: int) -> None:
    rng = random.Random(seed)
    replicas = random_replicas(rng)
    cm = CostModel(CLUSTER, MODEL, TrainingJob(16, 128)).under(replicas)
    checked = 0
    for seg in segments_of(replicas, MODEL):
        if len(seg.holders) < 2:
            continue
        stages = [replicas[ri].stages[si] for ri, si in seg.holders]
        for kind in ("all-reduce", "reduce-scatter", "all-gather"):
            every = steps_time_s(segment_hops(cm, replicas, seg, kind, 4.0))
            figures = kind_figures(cm, stages, kind, 4.0, seg.num_params(MODEL))
            host = CLUSTER.network.host_copy_bw_bytes_per_s
            assert figures.time_s(seg.num_params(MODEL), host) == every
            checked += 1
    assert checked or len(replicas) < 2
