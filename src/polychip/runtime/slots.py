"""Fixed-duration slots: the emulated chips' compute phases.

An emulated chip runs the real mathematics of a phase, then sleeps until the phase has lasted
exactly ``dilation * target_s`` seconds, where ``target_s`` is what the cost model gives for
that chip and that work. The dilation (about 3 on a 2-core host with 4 ranks) is chosen so the
real computation always fits in its slot; a phase whose body took longer than its slot is an
*overrun*: it is not padded, and counted so that the report can say the emulation was off.
Fixed slots, rather than sleeps proportional to a measured time, are what makes emulated
timings reproducible on a shared host (docs/runtime.md, "Emulated chips"). How the dilation
is chosen and raised: :mod:`polychip.runtime.dilation`; the clock the executor is given:
:class:`polychip.runtime.emulate.EmulatedClock`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from polychip.runtime.errors import RuntimeSetupError


@dataclass(frozen=True)
class PhaseTotals:
    """Totals for all runs of one named phase."""

    name: str
    num_calls: int
    compute_s: float  # the bodies' real seconds
    padded_s: float  # seconds slept to fill the slots
    slot_s: float
    num_overruns: int


@dataclass(frozen=True)
class ClockSummary:
    dilation: float
    phases: tuple[PhaseTotals, ...]
    lost_s: float = 0.0  # how much later than their slots the emulated chip finished work

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
    """Pads each phase to ``dilation * target_s`` and keeps the totals per phase name."""

    def __init__(self, dilation: float) -> None:
        if not dilation > 0:
            raise RuntimeSetupError(
                f"dilation={dilation}: the emulation dilation must be > 0 (about 3 on a small "
                f"shared host)")
        self.dilation = dilation
        self._totals: dict[str, _Accumulator] = {}
        self._deadline: float | None = None  # end of the last phase's slot
        self._late_s = 0.0  # how late the last phase ended (a chained phase may make it up)
        self._lost_s = 0.0  # lateness nobody made up: time the emulated chip lost

    def set_dilation(self, dilation: float) -> None:
        """A new factor for the phases to come (totals are kept)."""
        if not dilation > 0:
            raise RuntimeSetupError(f"dilation={dilation}: a dilation must be > 0")
        self.dilation = dilation

    @contextmanager
    def phase(self, name: str, target_s: float | None, *, chain: bool = False
              ) -> Iterator[None]:
        """Run the body, then sleep until ``dilation * target_s`` has passed since the phase
        began. A body that raises is neither padded nor counted.

        ``chain``: the phase follows the previous one back to back on the emulated chip, so
        its slot starts where the previous slot ended (not when this body starts): a phase
        that ran a little late (an overrun) is made up by the next ones, as on a real chip
        whose k-th micro-batch of a sequence ends at k x its time."""
        if target_s is None or target_s < 0:
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
        slot_s = self.dilation * target_s
        totals.slot_s += slot_s
        deadline = self._deadline = slot_start + slot_s
        self._late_s = max(0.0, body_end - deadline)
        if body_end > deadline:
            totals.num_overruns += 1
            return
        totals.padded_s += sleep_until(deadline)

    def summary(self) -> ClockSummary:
        return ClockSummary(self.dilation, tuple(
            PhaseTotals(name, t.num_calls, t.compute_s, t.padded_s, t.slot_s, t.num_overruns)
            for name, t in self._totals.items()), self._lost_s + self._late_s)


def sleep_until(deadline: float) -> float:
    """Sleep until ``time.perf_counter()`` reaches ``deadline``; the seconds slept."""
    begin = now = time.perf_counter()
    while now < deadline:
        time.sleep(deadline - now)
        now = time.perf_counter()
    return now - begin
