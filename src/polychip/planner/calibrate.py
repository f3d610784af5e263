"""A measured run held against the estimate of the plan it ran, phase by phase and stage by
stage (`polychip calibrate`; docs/cost-model.md, "Calibrate").

Each stage of each replica has, measured (its TP leader's records after the warm-up steps,
the median of each phase) and estimated (the cost model, with the profiles given), the five
phases of a run's metrics -- `compute_s` (micro-batches x forward + backward), the pipeline
wait, the exposed gradient sync, the optimizer, the host work (`idle_s`) -- which sum to the
step, and the device's peak memory as that run measures it (`MemoryBreakdown.
measured_basis_bytes`). How the estimate splits one stage's step:

  compute   M x (forward + backward), the stage's own
  idle      M x the host work per micro-batch + the host work per step (profiled; else 0)
  wait      the rest of its replica's pipeline span (bubbles, transfers); with one replica
            also what it waits for the slowest stage's optimizer and host work
  grad sync the plan's exposed gradient sync; with several replicas also what the stage
            waits at it for slower replicas (and for slower optimizers: the next step's)
  optimizer the stage's own
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from polychip.costmodel import ComputeProfile, CostModel
from polychip.costmodel.plancost import PlanCost
from polychip.plan.plan import Plan
from polychip.planner.runmetrics import PHASES, RunRecord

MEASURED, PROFILED, ANALYTIC = "measured", "profiled", "analytic"
# Which figures of the estimate (costmodel/profiled.FIGURES) each phase rests on
PHASE_FIGURES = {"compute_s": ("block", "embedding", "head", "tp_collectives"),
                 "pipeline_wait_s": ("p2p",), "grad_sync_s": ("grad_sync",),
                 "optimizer_s": ("optimizer",), "idle_s": ("host",),
                 "peak_memory_bytes": ("activation_memory",)}


@dataclass(frozen=True)
class StagePhases:
    """One stage of one replica: seconds per step by phase, the step, the peak memory."""

    replica: int
    stage: int
    chip: str
    phases: dict[str, float]  # PHASES -> seconds
    step_s: float
    peak_memory_bytes: int


@dataclass(frozen=True)
class Comparison:
    plan: Plan
    measured: tuple[StagePhases, ...]
    estimated: tuple[StagePhases, ...]
    measured_step_s: float  # the median over steps of the slowest rank's step
    estimated_step_s: float
    memory_kind: str  # how the run measured memory (runtime.memory)
    labels: dict[str, str]  # phase -> profiled | analytic | mixed (the estimate's source)
    cost_model: CostModel  # the estimate's
    cost: PlanCost


def _label(sources: dict[str, str], figures: Sequence[str]) -> str:
    kinds = {sources[f] for f in figures if f in sources}
    if not kinds:
        return ANALYTIC
    if kinds == {"measured"}:
        return PROFILED
    return ANALYTIC if kinds == {"analytic"} else "mixed"


def estimated_stages(plan: Plan, cm: CostModel, cost: PlanCost, memory_kind: str
                     ) -> tuple[StagePhases, ...]:
    """Every stage's step as the estimate splits it (module docstring)."""
    zero_shards = len(plan.replicas) if plan.zero1 else 1
    spans = [cm.pipeline_time_s(r, plan.schedule, plan.virtual_stages)[0] for r in plan.replicas]
    longest, data_parallel = max(spans), len(plan.replicas) > 1
    out = []
    for ri, r in enumerate(plan.replicas):
        m = r.num_micro_batches
        for si, st in enumerate(r.stages):
            host_micro, host_step = cm.host_times(cm.chip(st.chip), r.micro_batch_size)
            compute = m * cm.times_of(r, si, plan.schedule).total_s
            wait = spans[ri] - compute - m * host_micro
            sync = cost.dp_sync_s + (longest - spans[ri] if data_parallel else 0.0)
            phases = {"compute_s": compute, "pipeline_wait_s": wait, "grad_sync_s": sync,
                      "optimizer_s": cm.stage_optimizer_time_s(r, si, zero_shards),
                      "idle_s": m * host_micro + host_step}
            rest = max(0.0, cost.step_time_s - sum(phases.values()))
            phases["grad_sync_s" if data_parallel else "pipeline_wait_s"] += rest
            memory = cost.memory[(ri, si)].measured_basis_bytes(memory_kind)
            out.append(StagePhases(ri, si, st.chip, phases, cost.step_time_s, memory))
    return tuple(out)


def measured_stages(plan: Plan, records: Sequence[RunRecord]) -> tuple[StagePhases, ...]:
    """Every stage's medians over the (steady) records of its TP leader; the peak memory is
    the largest of any of its ranks."""
    by_stage: dict[tuple[int, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        by_stage[(r.replica, r.stage)].append(r)
    out = []
    for ri, rep in enumerate(plan.replicas):
        for si, st in enumerate(rep.stages):
            mine = by_stage[(ri, si)]
            leader = [r for r in mine if r.tp_rank == 0]
            phases = {p: statistics.median(r.phases[p] for r in leader) for p in PHASES}
            out.append(StagePhases(ri, si, st.chip, phases,
                                   statistics.median(r.seconds for r in leader),
                                   max(r.peak_memory_bytes for r in mine)))
    return tuple(out)


def measured_step_s(records: Sequence[RunRecord]) -> float:
    """The median over steps of the slowest rank's step (a step ends when every rank's does)."""
    by_step: dict[int, float] = defaultdict(float)
    for r in records:
        by_step[r.step] = max(by_step[r.step], r.seconds)
    return statistics.median(by_step.values())


def compare(plan: Plan, records: Sequence[RunRecord], profile: ComputeProfile | None
            ) -> Comparison:
    """The run (steady records) beside the estimate of its plan on the cost model with
    `profile`'s measurements (and corrections)."""
    cm = CostModel(plan.cluster, plan.model, plan.job, profile)
    cost = cm.evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages)
    sources = cost.to_estimate(plan.replicas, cm).sources
    kind = records[0].memory_kind
    return Comparison(
        plan=plan, measured=measured_stages(plan, records),
        estimated=estimated_stages(plan, cm, cost, kind),
        measured_step_s=measured_step_s(records), estimated_step_s=cost.step_time_s,
        memory_kind=kind,
        labels={phase: _label(sources, figures) for phase, figures in PHASE_FIGURES.items()},
        cost_model=cm, cost=cost)


def error(measured: float, estimated: float) -> float | None:
    """(estimated - measured) / measured; None when nothing was measured."""
    return None if measured <= 0 else (estimated - measured) / measured

