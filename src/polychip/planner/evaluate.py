"""Evaluate any plan -- searched or written by hand -- as it stands now: its step recomputed
on the cost model (measured profiles where given), optionally replayed in the simulator,
with every device's peak memory and a verdict on whether it fits. A plan file's stored
`estimate` is only compared, never shown as current: the plan may have been edited since.

The figures (`polychip estimate --json`, docs/plan-format.md "Evaluating a plan"):
`step_time_s`, `tokens_per_s`, `fits`, `limit`, `phases` (`compute_s`, `pipeline_wait_s`,
`grad_sync_s`, `optimizer_s`: the busiest device's step, summing to the step), `devices`
(each `rank`, `chip`, `peak_memory_bytes`, `capacity_bytes`), `sources`, and `simulated`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from polychip.costmodel import ComputeProfile, CostModel
from polychip.plan.plan import Estimate, Plan
from polychip.simulator import SimResult, simulate

GIB = 1024**3
SAME_REL = 1e-6  # a stored figure this close to the recomputed one is the same


@dataclass(frozen=True)
class DeviceFigure:
    rank: int
    chip: str
    peak_memory_bytes: int
    capacity_bytes: int


@dataclass(frozen=True)
class StepFigures:
    """One way (analytic or simulated) of seeing one step of the plan."""

    step_time_s: float
    tokens_per_s: float
    fits: bool
    limit: str | None  # what does not fit; None when everything does
    phases: dict[str, float]  # compute_s, pipeline_wait_s, grad_sync_s, optimizer_s
    devices: tuple[DeviceFigure, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "fits": self.fits,
            "limit": self.limit,
            "phases": dict(self.phases),
            "devices": [vars(d).copy() for d in self.devices],
        }


@dataclass(frozen=True)
class Evaluation:
    plan: Plan
    estimate: Estimate  # the analytic estimate, recomputed
    analytic: StepFigures
    sources: dict[str, str]  # figure -> measured | analytic | mixed
    simulated: StepFigures | None = None
    sim: SimResult | None = None
    stored_differs: str | None = None  # one line when the plan file's estimate is stale

    def to_dict(self) -> dict[str, Any]:
        out = self.analytic.to_dict()
        out["sources"] = dict(self.sources)
        if self.simulated is not None:
            out["simulated"] = self.simulated.to_dict()
        return out


def _limit(over: list[str]) -> str | None:
    return None if not over else "memory: " + "; ".join(over)


def _over(chip: str, where: str, used: int, cap: int) -> str:
    return f"{where} on {chip} needs {used / GIB:.1f} GiB of {cap / GIB:.1f} GiB"


def _analytic(plan: Plan, cm: CostModel) -> tuple[Estimate, StepFigures]:
    cost = cm.evaluate(plan.replicas, plan.schedule, plan.zero1, plan.virtual_stages)
    est = cost.to_estimate(plan.replicas, cm)
    devices, over = [], []
    for r in plan.ranks():
        mem = cost.memory[(r.replica, r.stage)].total
        cap = cm.chip(r.chip).memory_bytes
        devices.append(DeviceFigure(r.rank, r.chip, mem, cap))
        if mem > cap and r.tp_rank == 0:
            over.append(_over(r.chip, f"replica {r.replica} stage {r.stage}", mem, cap))
    figures = StepFigures(est.step_time_s, est.tokens_per_s, not over, _limit(over),
                          dict(est.phases_s), tuple(devices))
    return est, figures


def _simulated(result: SimResult) -> StepFigures:
    est = result.to_estimate()
    devices, over = [], []
    for r in result.plan.ranks():
        st = result.stage_of_rank(r.rank)
        used, cap = st.peak_memory_bytes, st.memory_capacity_bytes
        devices.append(DeviceFigure(r.rank, r.chip, used, cap))
        if used > cap and r.tp_rank == 0:
            over.append(_over(r.chip, f"replica {r.replica} stage {r.stage}", used, cap))
    return StepFigures(est.step_time_s, est.tokens_per_s, not over, _limit(over),
                       dict(est.phases_s), tuple(devices))


def stored_estimate_note(plan: Plan, fresh: Estimate, profiled: bool) -> str | None:
    """One line when the plan file's stored estimate is not the recomputed one."""
    old = plan.estimate
    if old is None:
        return None
    same = math.isclose(old.step_time_s, fresh.step_time_s, rel_tol=SAME_REL) and all(
        math.isclose(old.peak_memory_bytes.get(c, -1), v, rel_tol=SAME_REL)
        for c, v in fresh.peak_memory_bytes.items()
    )
    if same:
        return None
    why = ("profiles were given" if profiled
           else "the plan was edited, or polychip's cost model changed since it was written")
    return (f"the plan file's stored estimate (step {old.step_time_s:.4g} s, peak memory "
            f"{_peaks(old)}) differs from the recomputed one (step {fresh.step_time_s:.4g} s, "
            f"{_peaks(fresh)}): {why}; the recomputed one is shown")


def _peaks(est: Estimate) -> str:
    return ", ".join(f"{c} {b / GIB:.2f} GiB" for c, b in sorted(est.peak_memory_bytes.items()))


def evaluate_plan(plan: Plan, profile: ComputeProfile | None = None, *,
                  simulate_step: bool = False, overlap_grad_sync: bool | None = None
                  ) -> Evaluation:
    """The plan's step as it stands: analytic (with `profile`'s measurements where it has
    them) and, with `simulate_step`, replayed on the same cost model (gradient sync
    overlapped with the backward as the job says, unless `overlap_grad_sync` is given)."""
    if overlap_grad_sync is not None and overlap_grad_sync != plan.job.overlap_grad_sync:
        # asked to price the sync otherwise: analytic and simulated alike, no stored figure
        job = dataclasses.replace(plan.job, overlap_grad_sync=overlap_grad_sync)
        plan = dataclasses.replace(plan, job=job, estimate=None)
    cm = CostModel(plan.cluster, plan.model, plan.job, profile)
    est, analytic = _analytic(plan, cm)
    result = simulated = None
    if simulate_step:
        result = simulate(plan, cost_model=cm)
        simulated = _simulated(result)
    return Evaluation(plan, est, analytic, dict(est.sources), simulated, result,
                      stored_estimate_note(plan, est, profile is not None))
