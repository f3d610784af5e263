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
from polychip.plan.naive import even_batch_replicas, even_layer_replicas
from polychip.plan.plan import Plan, Replica
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.metrics import RunSummary

if TYPE_CHECKING:
    from polychip.runtime.train import TrainConfig


def _with_replicas(plan: Plan, replicas: tuple[Replica, ...], note: str) -> Plan:
    """`plan` with other replicas, its estimate recomputed on the same cost model."""
    cost = CostModel(plan.cluster, plan.model, plan.job)
    estimate = cost.evaluate(replicas, plan.schedule, plan.zero1).to_estimate(replicas, cost)
    return dataclasses.replace(plan, replicas=replicas, estimate=estimate, baselines={},
                               ideal=None, notes=(note,))


def even_batch_split(plan: Plan) -> Plan:
    """The naive split of the same replicas: equal batch shares (plan.naive)."""
    return _with_replicas(plan, even_batch_replicas(plan),
                          "naive even batch split of the same replicas")


def even_layer_split(plan: Plan) -> Plan:
    """The naive split of the same pipelines: layers cut evenly over stages (plan.naive)."""
    return _with_replicas(plan, even_layer_replicas(plan),
                          "naive even layer split of the same pipelines")


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
