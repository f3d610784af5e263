"""Side-by-side runs of plans that share their ranks (for `polychip demo` and the benchmark).

The plans run one after the other inside one launch (same processes, same emulated chips,
one dilation agreed over all of them), optionally in interleaved rounds (A, B, A, B, ...), so
their throughputs are ratios measured side by side, not lone absolute times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from polychip.costmodel.estimate import CostModel
from polychip.plan.plan import Plan, Replica
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.metrics import RunSummary

if TYPE_CHECKING:
    from polychip.runtime.train import TrainConfig


def even_batch_split(plan: Plan) -> Plan:
    """The naive split of the same replicas: equal batch shares (the first B mod R replicas
    take one more), each replica's micro-batch size kept when it divides its new share (else
    the largest divisor below it), the estimate recomputed on the same cost model."""
    num = len(plan.replicas)
    base, extra = divmod(plan.job.global_batch, num)
    replicas = []
    for i, rep in enumerate(plan.replicas):
        share = base + (1 if i < extra else 0)
        if share < 1:
            raise RuntimeSetupError(
                f"global batch {plan.job.global_batch} is smaller than the {num} replicas: an "
                f"even split leaves a replica without samples; use a larger global batch")
        micro = next(m for m in range(min(rep.micro_batch_size, share), 0, -1) if share % m == 0)
        replicas.append(Replica(rep.stages, share, micro))
    cost = CostModel(plan.cluster, plan.model, plan.job)
    even = tuple(replicas)
    estimate = cost.evaluate(even, plan.schedule, plan.zero1).to_estimate(even, cost)
    return dataclasses.replace(plan, replicas=even, estimate=estimate, baselines={}, ideal=None,
                               notes=("naive even batch split of the same replicas",))


def even_layer_split(plan: Plan) -> Plan:
    """The naive split of the same pipelines: every replica's layers cut evenly over its
    stages (the first L mod S stages take one more), same devices and batches, the estimate
    recomputed on the same cost model."""
    replicas = []
    for rep in plan.replicas:
        num = rep.num_stages
        base, extra = divmod(plan.model.num_layers, num)
        if base < 1:
            raise RuntimeSetupError(
                f"{plan.model.num_layers} layers cannot be split evenly over {num} stages: "
                f"an even split leaves a stage without layers; use fewer stages")
        stages, start = [], 0
        for i, st in enumerate(rep.stages):
            end = start + base + (1 if i < extra else 0)
            stages.append(dataclasses.replace(st, layer_start=start, layer_end=end))
            start = end
        replicas.append(Replica(tuple(stages), rep.batch_size, rep.micro_batch_size))
    cost = CostModel(plan.cluster, plan.model, plan.job)
    even = tuple(replicas)
    estimate = cost.evaluate(even, plan.schedule, plan.zero1).to_estimate(even, cost)
    return dataclasses.replace(plan, replicas=even, estimate=estimate, baselines={}, ideal=None,
                               notes=("naive even layer split of the same pipelines",))


def same_ranks(plans: Sequence[Plan]) -> None:
    keys = {tuple((r.node, r.local_device, r.chip) for r in p.ranks()) for p in plans}
    if len(keys) != 1:
        raise RuntimeSetupError(
            "the plans to compare place their ranks differently: a side-by-side run needs "
            "the same devices and chips in the same rank order")


@dataclass(frozen=True)
class CompareTask:
    """Train each plan for ``steps[i]`` steps, in ``rounds`` interleaved rounds; rank 0
    returns one summary per (round, plan), in that order."""

    plans: tuple[Plan, ...]
    steps: tuple[int, ...]
    config: TrainConfig
    rounds: int = 1
    progress_labels: tuple[str, ...] = ()

    @property
    def emulate(self) -> bool:
        return self.config.emulate

    @property
    def timeout(self) -> timedelta:
        return self.config.timeout

    def __call__(self, plan: Plan, rank: int) -> list[RunSummary] | None:
        from polychip.runtime.session import agree_dilation, gather_summary
        from polychip.runtime.topology import build_topology
        from polychip.runtime.train import Trainer

        config = self.config
        same_ranks(self.plans)
        trainers = [Trainer(p, config, build_topology(p, rank, emulate=config.emulate,
                                                      timeout=config.timeout))
                    for p in self.plans]
        if config.emulate:
            dilation = config.dilation or agree_dilation(trainers)
            for t in trainers:
                t.use_dilation(dilation, adaptive=config.dilation is None)
        out: list[RunSummary] = []
        done = [0] * len(trainers)
        for _ in range(self.rounds):
            for i, (trainer, steps) in enumerate(zip(trainers, self.steps, strict=True)):
                label = self.progress_labels[i] if self.progress_labels else None
                records = trainer.run(steps, start=done[i],
                                      progress=config.progress and trainer.reports
                                      and bool(label),
                                      label=label or "")
                done[i] += steps
                for other in trainers:  # a dilation raised under load holds for all plans
                    other.raise_dilation_to(trainer.dilation or 0.0)
                summary = gather_summary(trainer, records)
                if summary is not None:
                    out.append(summary)
        return out if rank == 0 else None
