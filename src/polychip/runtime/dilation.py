"""The emulation's dilation: chosen from a warm-up in which every rank times its real work
(alone and with every rank busy) against the cost model's targets, and raised during the
run when overruns cost the emulated chips more than a small share of their time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from polychip.plan.plan import Plan
from polychip.runtime.emulate import phase_targets
from polychip.runtime.errors import RuntimeSetupError

DILATION_MARGIN = 3.0
"""Slots are this much longer than a rank's real work timed alone (room for contention)."""
BUSY_MARGIN = 1.25
"""... and this much longer than its work timed while every rank computes at once."""


@dataclass(frozen=True)
class WarmupTiming:
    """One rank's real compute for one step, timed alone, beside the cost model's times."""

    host: str
    cores: int  # CPU cores this rank may use
    compute_s: float  # forward + backward of all its micro-batches, this rank alone
    busy_compute_s: float  # the same while every rank computes at once
    compute_target_s: float
    optimizer_s: float
    optimizer_target_s: float
    step_target_s: float  # the rank's whole emulated step: compute, all-reduce, optimizer


def dilation_from(timings: Sequence[WarmupTiming], margin: float = DILATION_MARGIN,
                  busy_margin: float = BUSY_MARGIN) -> float:
    """The dilation for one plan from every rank's warm-up: each rank's real work, timed
    alone, must fit its slots, and each host's ranks together must fit its cores within the
    emulated step (their work, squeezed onto the cores, is what stretches phases under
    contention), both with ``margin``; and each rank's work timed while every rank computes
    (the worst moment of a step, other jobs on the host included) must fit with
    ``busy_margin``."""
    fit = max(max(t.compute_s / t.compute_target_s, t.optimizer_s / t.optimizer_target_s)
              for t in timings)
    busy = max(t.busy_compute_s / t.compute_target_s for t in timings)
    step_s = max(t.step_target_s for t in timings)  # every rank waits for the slowest
    hosts: dict[str, list[WarmupTiming]] = {}
    for t in timings:
        hosts.setdefault(t.host, []).append(t)
    capacity = max(sum(t.compute_s + t.optimizer_s for t in ts) / (ts[0].cores * step_s)
                   for ts in hosts.values())
    return dilation_for(max(fit * margin, capacity * margin, busy * busy_margin), 1.0)


def plan_step_target_s(plan: Plan) -> float:
    """The emulated step every rank waits for: the slowest rank's compute and optimizer, plus
    the modelled all-reduce (the same figure on every rank)."""
    out = 0.0
    for ri, rep in enumerate(plan.replicas):
        for si in range(rep.num_stages):
            t = phase_targets(plan, ri, si)
            out = max(out, rep.num_micro_batches * t.micro_batch_s + t.optimizer_s
                      + t.gradient_sync_s)
    return out


class DilationGovernor:
    """Raises the dilation when overruns cost the emulated chips more than ``max_lost`` of
    their time over ``window`` steps (another job started on the host, say).

    Its inputs are the same on every rank -- the time all ranks lost this step (summed by the
    gradient all-reduce), the dilation and the plan's emulated step -- so every rank makes the
    same decision at the same step without a collective of its own.
    """

    def __init__(self, dilation: float, step_target_s: float, *, window: int = 3,
                 max_lost: float = 0.02, factor: float = 1.25) -> None:
        self.dilation, self.step_target_s = dilation, step_target_s
        self.window, self.max_lost, self.factor = window, max_lost, factor
        self._lost: list[float] = []

    def observe(self, lost_s: float) -> float | None:
        """Record one step's lateness summed over the ranks; the new dilation, if raised."""
        self._lost.append(lost_s)
        if len(self._lost) < self.window:
            return None
        budget = self.max_lost * self.window * self.dilation * self.step_target_s
        lost, self._lost = sum(self._lost), []
        if lost <= budget:
            return None
        self.dilation = dilation_for(self.dilation, self.factor)
        return self.dilation


def dilation_for(ratio: float, margin: float = DILATION_MARGIN) -> float:
    """The dilation for a worst measured real/target ratio: times ``margin``, rounded up to
    two significant digits (so ranks and reports show a readable factor)."""
    if not ratio > 0:
        raise RuntimeSetupError(
            f"measured real/target ratio {ratio}: must be > 0; the warm-up timed nothing")
    raw = ratio * margin
    unit = 10.0 ** (math.floor(math.log10(raw)) - 1)
    return round(math.ceil(raw / unit - 1e-9) * unit, 12)
