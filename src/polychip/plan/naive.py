"""The naive, even splits a homogeneous tool makes: one home for "split evenly", used by the
planner's naive baseline and by the runtime's side-by-side comparisons."""

from __future__ import annotations

import dataclasses

from polychip.plan.plan import Plan, Replica
from polychip.plan.validate import PlanError


def even_parts(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal integers, the first `total % parts` one larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def even_batch_replicas(plan: Plan) -> tuple[Replica, ...]:
    """The same replicas with equal batch shares; each replica's micro-batch size kept when it
    divides its new share (else the largest divisor below it)."""
    num = len(plan.replicas)
    if plan.job.global_batch < num:
        raise PlanError(
            f"global batch {plan.job.global_batch} is smaller than the {num} replicas: an even "
            f"split leaves a replica without samples; use a larger global batch")
    replicas = []
    for rep, share in zip(plan.replicas, even_parts(plan.job.global_batch, num), strict=True):
        micro = next(m for m in range(min(rep.micro_batch_size, share), 0, -1) if share % m == 0)
        replicas.append(Replica(rep.stages, share, micro))
    return tuple(replicas)


def even_layer_replicas(plan: Plan) -> tuple[Replica, ...]:
    """The same pipelines with every replica's layers cut evenly over its stages; same devices
    and batches."""
    replicas = []
    for rep in plan.replicas:
        if plan.model.num_layers < rep.num_stages:
            raise PlanError(
                f"{plan.model.num_layers} layers cannot be split evenly over {rep.num_stages} "
                f"stages: an even split leaves a stage without layers; use fewer stages")
        stages, start = [], 0
        for st, n in zip(rep.stages, even_parts(plan.model.num_layers, rep.num_stages),
                         strict=True):
            stages.append(dataclasses.replace(st, layer_start=start, layer_end=start + n))
            start += n
        replicas.append(Replica(tuple(stages), rep.batch_size, rep.micro_batch_size))
    return tuple(replicas)
