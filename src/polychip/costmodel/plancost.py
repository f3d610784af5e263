"""The cost of a plan as `CostModel.evaluate` returns it, and its JSON-facing `Estimate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from polychip.costmodel import profiled
from polychip.costmodel.memory import MemoryBreakdown
from polychip.plan.plan import Estimate, Replica

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel


@dataclass(frozen=True)
class PlanCost:
    step_time_s: float
    tokens_per_s: float
    mfu: float
    pipeline_s: float
    dp_sync_s: float
    optimizer_s: float
    bubble_fraction: float
    compute_s: float = 0.0  # the busiest device's forward + backward over the step
    idle_s: float = 0.0  # its host work outside the phases (profiled; 0 analytic) ...
    step_idle_s: float = 0.0  # ... of which per step, after the pipeline
    # (replica, stage) -> memory of one device of that stage
    memory: dict[tuple[int, int], MemoryBreakdown] = field(default_factory=dict)
    violations: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        return not self.violations

    def to_estimate(self, replicas: tuple[Replica, ...], cm: CostModel) -> Estimate:
        return Estimate.of_step(
            step_time_s=self.step_time_s,
            tokens_per_s=self.tokens_per_s,
            mfu=self.mfu,
            pipeline_s=self.pipeline_s,
            dp_sync_s=self.dp_sync_s,
            optimizer_s=self.optimizer_s,
            bubble_fraction=self.bubble_fraction,
            compute_s=self.compute_s,
            idle_s=self.idle_s,
            step_idle_s=self.step_idle_s,
            sources=profiled.figure_sources(cm, replicas),
            memory_rows=(
                (
                    replicas[ri].stages[si].chip,
                    mem.total,
                    cm.chip(replicas[ri].stages[si].chip).memory_bytes,
                )
                for (ri, si), mem in self.memory.items()
            ),
            source="analytic",
        )
