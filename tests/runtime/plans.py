"""Hand-built data-parallel plans for runtime tests (the planner is not needed to run one)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from polychip.plan import Plan, Replica, Stage, validate_plan
from polychip.spec.cluster import Cluster, cluster_from_dict, load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
# 2 x cpu-slow (vendor cpu-a) on node 0, cpu-fast (cpu-b) on node 1, cpu-mid (cpu-c) on node 2.
CPU_TEST = ROOT / "examples" / "clusters" / "cpu-test.yaml"
MICRO = ModelSpec("micro", num_layers=2, hidden_size=16, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=32, vocab_size=256)


def cpu_test_cluster() -> Cluster:
    return load_cluster(CPU_TEST)


def cluster(nodes: Sequence[dict], chips: dict | None = None) -> Cluster:
    return cluster_from_dict({"name": "test", "nodes": list(nodes), "chips": chips or {}})


def dp_plan(cluster: Cluster, replicas: Sequence[tuple[int, int, str, int, int]], *,
            model: ModelSpec = MICRO, seq_len: int = 8) -> Plan:
    """One single-stage replica per (node, device, chip, batch share, micro-batch size)."""
    job = TrainingJob(global_batch=sum(r[3] for r in replicas), seq_len=seq_len)
    plan = Plan(cluster, model, job, tuple(
        Replica((Stage(0, model.num_layers, node, (dev,), chip),), share, mbs)
        for node, dev, chip, share, mbs in replicas))
    validate_plan(plan)
    return plan


def cpu_test_plan(shares: Sequence[int] = (4, 4, 16, 8), micro_batch: int = 4, *,
                  model: ModelSpec = MICRO, seq_len: int = 8) -> Plan:
    """The four chips of cpu-test (slow, slow, fast, mid), one replica each."""
    chips = ((0, 0, "cpu-slow"), (0, 1, "cpu-slow"), (1, 0, "cpu-fast"), (2, 0, "cpu-mid"))
    return dp_plan(cpu_test_cluster(), [(n, d, c, s, min(micro_batch, s))
                                        for (n, d, c), s in zip(chips, shares, strict=True)],
                   model=model, seq_len=seq_len)


StageSpec = tuple[int, int, int, tuple[int, ...], str]  # layers [a, b), node, devices, chip


def pp_plan(cluster: Cluster, replicas: Sequence[tuple[Sequence[StageSpec], int, int]], *,
            model: ModelSpec = MICRO, seq_len: int = 8, schedule: str = "1f1b") -> Plan:
    """Pipeline replicas: (stages, batch share, micro-batch size) each."""
    job = TrainingJob(global_batch=sum(r[1] for r in replicas), seq_len=seq_len)
    plan = Plan(cluster, model, job, tuple(
        Replica(tuple(Stage(a, b, node, devs, chip) for a, b, node, devs, chip in stages),
                share, mbs)
        for stages, share, mbs in replicas), schedule=schedule)  # type: ignore[arg-type]
    validate_plan(plan)
    return plan


TINY4 = ModelSpec("tiny4", num_layers=4, hidden_size=16, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=32, vocab_size=256)


def with_job(plan: Plan, **fields: object) -> Plan:
    """``plan`` with some of its job's fields changed (``sequence_parallel=False``, ...)."""
    return dataclasses.replace(plan, job=dataclasses.replace(plan.job, **fields))


def hybrid_plan(schedule: str = "1f1b") -> Plan:
    """Replica 0: layers 0-0 on a slow chip, 1-3 on two fast chips (TP 2), 6 samples in 3
    micro-batches; replica 1: all 4 layers on one slow chip, 2 samples in 2 micro-batches.
    Ranks: 0 (slow), 1 + 2 (fast, TP), 3 (slow). Two islands; replicas of different layouts
    and TP degrees hold the same layers."""
    c = cluster([{"chip": "cpu-fast", "count": 1, "chips_per_node": 2, "nic_gbps": 10},
                 {"chip": "cpu-slow", "count": 1, "chips_per_node": 2, "nic_gbps": 10}])
    return pp_plan(c, [([(0, 1, 1, (0,), "cpu-slow"), (1, 4, 0, (0, 1), "cpu-fast")], 6, 2),
                       ([(0, 4, 1, (1,), "cpu-slow")], 2, 1)], model=TINY4, schedule=schedule)


def interleaved_plan() -> Plan:
    """Interleaved 1F1B, 2 model chunks per stage. Replica 0: 2 + 2 layers (chunks: layers 0
    and 2 on the slow chip, 1 and 3 on the fast TP pair), 4 micro-batches of 1; replica 1:
    all 4 layers on one slow chip (chunks 0-1 and 2-3, feeding itself), 2 micro-batches."""
    plan = hybrid_plan()
    staged = pp_plan(plan.cluster, [([(0, 2, 1, (0,), "cpu-slow"), (2, 4, 0, (0, 1), "cpu-fast")],
                                     4, 1), ([(0, 4, 1, (1,), "cpu-slow")], 2, 1)],
                     model=TINY4, schedule="interleaved-1f1b")
    return dataclasses.replace(staged, virtual_stages=2)
