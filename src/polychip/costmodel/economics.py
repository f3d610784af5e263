"""The compute ceiling, energy and money of a plan (docs/planner.md, "The physical limit"
and "Cost and energy").

The ceiling uses the one definition of each part: a chip's achievable FLOP/s is
`Accelerator.achievable_flops` (dense peak x large-GEMM efficiency) and a token's training
FLOPs is `ModelSpec.training_flops_per_token`, as MFU uses them. No plan can exceed it: it
has no bubble, no communication, no memory-bound kernel and no recompute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from polychip.plan.plan import Baseline, Plan, Replica
from polychip.spec.cluster import Cluster, NodeGroup
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

MTOK = 1e6
J_PER_KWH = 3.6e6


def compute_ceiling_tokens_per_s(cluster: Cluster, model: ModelSpec, job: TrainingJob) -> float:
    """Σ chips x achievable FLOP/s ÷ training FLOPs per token: the cluster's physical limit."""
    flops = sum(g.num_devices * g.chip.achievable_flops(job.precision) for g in cluster.groups)
    return flops / model.training_flops_per_token(job.seq_len)


def chips_used(cluster: Cluster, replicas: Iterable[Replica]) -> Counter[int]:
    """Node-group index -> how many of its chips the replicas' stages occupy."""
    used: Counter[int] = Counter()
    for rep in replicas:
        for st in rep.stages:
            used[cluster.group_of_node(st.node).index] += st.tp
    return used


def _per_mtok(
    cluster: Cluster, replicas: Iterable[Replica], tokens_per_s: float, figure: Callable
) -> float | None:
    """Σ over the chips the plan uses of figure(group) x seconds per million tokens, or None
    when any used chip's figure is unknown."""
    if tokens_per_s <= 0:
        return None
    total = 0.0
    for index, count in chips_used(cluster, replicas).items():
        value = figure(cluster.groups[index])
        if value is None:
            return None
        total += count * value
    return total * MTOK / tokens_per_s


def energy_kwh_per_mtok(plan: Plan, tokens_per_s: float) -> float | None:
    """kWh per million tokens: board power of the used chips x time (no host, no cooling)."""
    joules = _per_mtok(
        plan.cluster, plan.replicas, tokens_per_s, lambda g: g.economics.board_power_w
    )
    return None if joules is None else joules / J_PER_KWH


def cost_per_mtok(
    cluster: Cluster, replicas: Iterable[Replica], tokens_per_s: float
) -> float | None:
    """US$ per million tokens: rent per hour of the used chips x hours (mid of a range)."""
    dollar_s = _per_mtok(cluster, replicas, tokens_per_s, _rent)
    return None if dollar_s is None else dollar_s / 3600


def _rent(group: NodeGroup) -> float | None:
    return group.economics.rent_per_hour


def unpriced_groups(cluster: Cluster) -> list[NodeGroup]:
    """The node groups whose rent is unknown."""
    return [g for g in cluster.groups if _rent(g) is None]


def ceiling_baseline(cluster: Cluster, model: ModelSpec, job: TrainingJob) -> Baseline:
    """The compute ceiling as a reference row (`plan.limit`)."""
    chips = ", ".join(f"{g.num_devices} {g.chip.name}" for g in cluster.groups)
    return Baseline(
        "compute_ceiling",
        f"all {chips} at achievable FLOP/s / model FLOPs per token (no bubble, comms, "
        f"recompute)",
        compute_ceiling_tokens_per_s(cluster, model, job),
    )


def priced(plan: Plan) -> Plan:
    """`plan` with its compute ceiling (`limit`) and its estimate's cost and energy per
    million tokens (None where a used chip's rent or power is unknown)."""
    est = plan.estimate
    if est is not None:
        est = replace(
            est,
            cost_per_mtok=cost_per_mtok(plan.cluster, plan.replicas, est.tokens_per_s),
            energy_kwh_per_mtok=energy_kwh_per_mtok(plan, est.tokens_per_s),
        )
    return replace(plan, estimate=est, limit=ceiling_baseline(plan.cluster, plan.model, plan.job))
