"""Hand-built plans for the simulator tests (a module, not a conftest, so its names do not
collide with other test folders' fixtures)."""

from __future__ import annotations

from typing import Any

from polychip.costmodel import CostModel, StageTimes
from polychip.plan import Plan, Replica, Stage
from polychip.spec.cluster import Cluster, cluster_from_dict, load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

FREE_NIC_GBPS = 1e12  # with latency 0: communication that costs (next to) nothing
MIXED = load_cluster("examples/clusters/h800-910b.yaml")  # h800 nodes 0-1, 910b nodes 2-5


def cluster(*nodes: dict[str, Any], latency_us: float = 10.0, host_copy_gbps: float = 25.0):
    """nodes: dicts of the cluster file's `nodes:` list."""
    return cluster_from_dict(
        {
            "name": "sim-test",
            "nodes": list(nodes),
            "network": {"latency_us": latency_us, "host_copy_gbps": host_copy_gbps},
        }
    )


def free_comm_cluster(num_nodes: int, chip: str = "h800") -> Cluster:
    return cluster(
        {"chip": chip, "count": num_nodes, "chips_per_node": 8, "nic_gbps": FREE_NIC_GBPS},
        latency_us=0.0,
    )


def make_plan(
    cl: Cluster,
    replicas: list[list[tuple[int, int, int]]],
    *,
    model: str = "tiny",
    micro_batches: int | list[int] = 4,
    micro_batch_size: int = 1,
    seq_len: int = 128,
    schedule: str = "1f1b",
    virtual_stages: int = 1,
    zero1: bool = False,
) -> Plan:
    """replicas: per replica, per stage (num_layers, node, tp); chips are taken in order
    from each node's free slots."""
    spec = load_model(model)
    used: dict[int, int] = {}
    reps = []
    counts = micro_batches if isinstance(micro_batches, list) else [micro_batches] * len(replicas)
    for stages, m in zip(replicas, counts, strict=True):
        built, start = [], 0
        for n_layers, node, tp in stages:
            first = used.get(node, 0)
            used[node] = first + tp
            chip = cl.nodes[node].group.chip.name
            devs = tuple(range(first, first + tp))
            built.append(Stage(start, start + n_layers, node, devs, chip))
            start += n_layers
        reps.append(Replica(tuple(built), m * micro_batch_size, micro_batch_size))
    job = TrainingJob(sum(r.batch_size for r in reps), seq_len)
    return Plan(cl, spec, job, tuple(reps), schedule, virtual_stages, zero1)


def mixed_plan(**kw):
    """Two alike cross-island pipelines sharing node 0, one h800 replica, one 910b one."""
    return make_plan(
        MIXED,
        [
            [(12, 0, 4), (20, 2, 8)],
            [(12, 0, 4), (20, 3, 8)],
            [(32, 1, 8)],
            [(16, 4, 8), (16, 5, 8)],
        ],
        model="llama2-7b",
        micro_batches=4,
        seq_len=2048,
        **kw,
    )


class FixedTimes(CostModel):
    """The plan's cost model with injected seconds per layer (forward, backward and the
    backward's weight-gradient part) and no embedding, head or optimizer time: the closed
    forms hold exactly."""

    def __init__(self, plan: Plan, fwd_s: float = 1.0, bwd_s: float = 2.0, wgrad_s: float = 0.0):
        super().__init__(plan.cluster, plan.model, plan.job)
        self.fwd_s, self.bwd_s, self.wgrad_s = fwd_s, bwd_s, wgrad_s  # wgrad_s: of bwd_s

    def stage_times(self, chip, num_layers, tp, micro_batch, first, last, recompute):
        n = num_layers
        return StageTimes(n * self.fwd_s, n * self.bwd_s, n * self.wgrad_s)

    def stage_optimizer_time_s(self, replica: Replica, si: int, zero_shards: int) -> float:
        return 0.0
