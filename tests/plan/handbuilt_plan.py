"""A small hand-built plan for the plan tests (a module, not a conftest, so it does not
collide with other tests' fixtures): two replicas over an H800 node and a 910B node."""

from __future__ import annotations

from polychip.plan.plan import Baseline, Estimate, Plan, Replica, Stage
from polychip.spec.cluster import Cluster, cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model


def make_cluster() -> Cluster:
    return cluster_from_dict(
        {
            "name": "plan-test",
            "nodes": [
                {"chip": "h800", "count": 1, "chips_per_node": 8, "nic_gbps": 400},
                {"chip": "910b", "count": 1, "chips_per_node": 8, "nic_gbps": 200},
            ],
            "chips": {"910b": {"compute_efficiency": 0.4}},  # an override must survive JSON
        }
    )


def make_plan() -> Plan:
    cluster = make_cluster()
    # tiny: 4 layers, 4 heads, 2 kv heads.
    replicas = (
        Replica(
            stages=(
                Stage(0, 3, node=0, local_devices=(0, 1), chip="h800"),
                Stage(3, 4, node=1, local_devices=(4, 5), chip="ascend-910b", recompute=True),
            ),
            batch_size=8,
            micro_batch_size=2,
        ),
        Replica(
            stages=(Stage(0, 4, node=1, local_devices=(0,), chip="ascend-910b"),),
            batch_size=4,
            micro_batch_size=4,
        ),
    )
    return Plan(
        cluster=cluster,
        model=load_model("tiny"),
        job=TrainingJob(global_batch=12, seq_len=128, allow_zero1=False),
        replicas=replicas,
        zero1=False,
        estimate=Estimate(
            step_time_s=0.123,
            tokens_per_s=12 * 128 / 0.123,
            mfu=0.31,
            peak_memory_bytes={"h800": 3 * 2**30, "ascend-910b": 2**31},
            memory_capacity_bytes={"h800": 80 * 2**30, "ascend-910b": 64 * 2**30},
            breakdown_s={"pipeline": 0.1, "dp_sync": 0.02, "optimizer": 0.003},
            bubble_fraction=0.25,
        ),
        baselines={
            "best_single_type": Baseline("best_single_type", "h800 only", 9000.0, 0.17, 0.2),
            "naive_mixed": Baseline("naive_mixed", "even split", 7000.0, feasible=False),
        },
        ideal=Baseline("ideal", "sum of types", 15000.0, per_chip_tokens_per_s={"h800": 1e4}),
        notes=("hand-built for the tests",),
    )
