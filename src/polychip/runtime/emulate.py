"""Emulated chip clocks: fixed-duration compute phases.

An emulated chip runs the real mathematics of a phase, then sleeps until the phase has lasted
exactly ``dilation * target_s`` seconds, where ``target_s`` is what the cost model gives for
that chip and that work. The dilation (about 3 on a 2-core host with 4 ranks) is chosen so the
real computation always fits in its slot; a phase whose body took longer than its slot is an
*overrun*: it is not padded, and counted so that the report can say the emulation was off.
See RUNTIME-NOTES.md, "Emulating slower chips". How the dilation is chosen and raised:
:mod:`polychip.runtime.dilation`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from polychip.costmodel.estimate import CostModel
from polychip.plan.plan import Plan
from polychip.plan.segments import grad_segments
from polychip.runtime.errors import RuntimeSetupError


@dataclass(frozen=True)
class PhaseTotals:
    """Totals for all runs of one named phase. ``slot_s`` is 0 when emulation is off."""

    name: str
    num_calls: int
    compute_s: float
    padded_s: float
    slot_s: float
    num_overruns: int


@dataclass(frozen=True)
class ClockSummary:
    dilation: float | None
    phases: tuple[PhaseTotals, ...]
    lost_s: float = 0.0  # how much later than their slots the emulated chip finished work

    @property
    def emulated(self) -> bool:
        return self.dilation is not None

    @property
    def num_overruns(self) -> int:
        return sum(p.num_overruns for p in self.phases)

    @property
    def compute_s(self) -> float:
        return sum(p.compute_s for p in self.phases)

    @property
    def padded_s(self) -> float:
        return sum(p.padded_s for p in self.phases)

    def phase(self, name: str) -> PhaseTotals:
        for totals in self.phases:
            if totals.name == name:
                return totals
        raise KeyError(name)


@dataclass
class _Accumulator:
    num_calls: int = 0
    compute_s: float = 0.0
    padded_s: float = 0.0
    slot_s: float = 0.0
    num_overruns: int = 0


class PhaseClock:
    """Times compute phases; with a ``dilation``, pads each one to ``dilation * target_s``.

    ``PhaseClock(None)`` turns emulation off: phases run and are timed, never padded.
    """

    def __init__(self, dilation: float | None) -> None:
        if dilation is not None and not dilation > 0:
            raise RuntimeSetupError(
                f"dilation={dilation}: the emulation dilation must be > 0 (about 3 on a small "
                f"shared host); pass None to run without emulated clocks")
        self.dilation = dilation
        self.last_s = 0.0  # wall seconds of the last phase, padding included
        self._totals: dict[str, _Accumulator] = {}
        self._deadline: float | None = None  # end of the last phase's slot
        self._late_s = 0.0  # how late the last phase ended (a chained phase may make it up)
        self._lost_s = 0.0  # lateness nobody made up: time the emulated chip lost

    @property
    def emulated(self) -> bool:
        return self.dilation is not None

    def set_dilation(self, dilation: float) -> None:
        """A new factor for the phases to come (totals are kept)."""
        if self.dilation is None or not dilation > 0:
            raise RuntimeSetupError(
                f"dilation={dilation}: only an emulated clock takes a new dilation (> 0)")
        self.dilation = dilation

    @contextmanager
    def phase(self, name: str, target_s: float | None = None, *, chain: bool = False
              ) -> Iterator[None]:
        """Run the body, then (when emulated) sleep until ``dilation * target_s`` has passed
        since the phase began. A body that raises is neither padded nor counted.

        ``chain``: the phase follows the previous one back to back on the emulated chip, so
        its slot starts where the previous slot ended (not when this body starts): a phase
        that ran a little late (an overrun) is made up by the next ones, as on a real chip
        whose k-th micro-batch of a sequence ends at k x its time."""
        if self.dilation is not None and (target_s is None or target_s < 0):
            raise RuntimeSetupError(
                f"phase {name!r} has target_s={target_s}: an emulated clock needs the "
                f"phase's duration on the emulated chip (>= 0 s) from the cost model")
        begin = time.perf_counter()
        slot_start = self._deadline if chain and self._deadline is not None else begin
        if not chain:
            self._lost_s, self._late_s = self._lost_s + self._late_s, 0.0
        yield
        body_end = time.perf_counter()
        totals = self._totals.setdefault(name, _Accumulator())
        totals.num_calls += 1
        totals.compute_s += body_end - begin
        self.last_s = body_end - begin
        if self.dilation is None:
            return
        assert target_s is not None
        slot_s = self.dilation * target_s
        totals.slot_s += slot_s
        deadline = self._deadline = slot_start + slot_s
        self._late_s = max(0.0, body_end - deadline)
        if body_end > deadline:
            totals.num_overruns += 1
            return
        totals.padded_s += sleep_until(deadline)
        self.last_s = time.perf_counter() - begin

    def summary(self) -> ClockSummary:
        return ClockSummary(self.dilation, tuple(
            PhaseTotals(name, t.num_calls, t.compute_s, t.padded_s, t.slot_s, t.num_overruns)
            for name, t in self._totals.items()), self._lost_s + self._late_s)


@dataclass(frozen=True)
class PhaseTargets:
    """Seconds the cost model gives the emulated chip for each phase of one rank (the
    simulator replays the same figures)."""

    chunk_s: tuple[tuple[float, float], ...]  # (forward, backward) of a micro-batch per chunk
    optimizer_s: float  # one AdamW step over the rank's parameters
    recv_act_s: float  # one micro-batch's activations from the previous stage
    recv_grad_s: float  # their gradient from the next stage
    allreduce_s: dict[str, float] = field(default_factory=dict)  # segment -> its all-reduce

    @property
    def forward_s(self) -> float:
        return sum(f for f, _ in self.chunk_s)

    @property
    def backward_s(self) -> float:
        return sum(b for _, b in self.chunk_s)

    @property
    def micro_batch_s(self) -> float:
        return self.forward_s + self.backward_s

    @property
    def gradient_sync_s(self) -> float:
        """All of this rank's gradient all-reduces in a step, one after the other."""
        return sum(self.allreduce_s.values())


def phase_targets(plan: Plan, replica: int, stage: int) -> PhaseTargets:
    """The cost model's times (the same ones the planner and the simulator use) for a rank of
    ``plan``: compute (per model chunk under interleaved 1F1B), transfers from its
    neighbours, and each gradient segment's all-reduce among its holders (uncontended)."""
    cost = CostModel(plan.cluster, plan.model, plan.job)
    rep = plan.replicas[replica]
    st, last = rep.stages[stage], rep.num_stages - 1
    v = plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1
    if v == 1:
        times = [cost.times_of(rep, stage)]
    else:
        times = [cost.stage_times(cost.chip(st.chip), st.num_layers // v, st.tp,
                                  rep.micro_batch_size, stage == 0 and c == 0,
                                  stage == last and c == v - 1, st.recompute)
                 for c in range(v)]
    allreduce = {seg.name: cost.segment_sync_time_s(plan.replicas, seg, plan.zero1)
                 for seg in grad_segments(plan) if (replica, stage) in seg.holders}
    n_bytes = cost.activation_bytes(rep.micro_batch_size)

    def from_stage(other: int) -> float:  # interleaved: the last stage feeds the first
        if rep.num_stages == 1:
            return 0.0
        return cost.transfer_time_s(rep.stages[other % rep.num_stages].node, st.node, n_bytes)

    return PhaseTargets(
        chunk_s=tuple((t.fwd_s, t.bwd_s) for t in times),
        optimizer_s=cost.stage_optimizer_time_s(rep, stage,
                                                len(plan.replicas) if plan.zero1 else 1),
        recv_act_s=from_stage(stage - 1), recv_grad_s=from_stage(stage + 1),
        allreduce_s=allreduce)


def sleep_until(deadline: float) -> float:
    """Sleep until ``time.perf_counter()`` reaches ``deadline``; the seconds slept."""
    begin = now = time.perf_counter()
    while now < deadline:
        time.sleep(deadline - now)
        now = time.perf_counter()
    return now - begin
