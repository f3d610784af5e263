"""How a rank's step is timed: the stage executor (:class:`polychip.runtime.pipeline.
StageRunner`) wraps each phase of its program in ``clock.phase(...)`` and knows nothing else
about time. The clock it is given decides what a phase costs:

- :class:`WallClock` (a plain run) only measures;
- :class:`polychip.runtime.emulate.EmulatedClock` (``--emulate``) also makes each phase last
  what the cost model gives the emulated chip (fixed-duration slots, chained slots, emulated
  links, lateness, the dilation governor), and says what the step took in emulated chip time.

The phases are those an estimate prices (`polychip estimate`'s ``phases``), so a run can be
held against its plan phase by phase:

  compute_s        F and B (and W, a zero-bubble schedule's weight gradients): forward
                   and backward of the stage's micro-batches
  pipeline_wait_s  RA and RG (waiting for activations / gradients from the neighbouring
                   stages, pipeline bubbles included) and completing the step's sends
  grad_sync_s      AR: the gradient all-reduces as exposed on this rank (communication and
                   waiting for the other holders)
  optimizer_s      OPT
  idle_s           the rest of the step: Python between actions, reading the data, posting
                   sends, zeroing the gradients

The five sum to the step's wall seconds (``idle_s`` is what the four others leave). On a
device whose kernels run asynchronously, a phase ends when the device's current stream has
finished its work (``sync``), so that the time of a kernel is counted in the phase that
launched it; collectives on their own streams are not waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from polychip.plan.schedule import Action

if TYPE_CHECKING:
    import torch


class Phase(StrEnum):
    COMPUTE = "compute"
    PIPELINE_WAIT = "pipeline_wait"
    GRAD_SYNC = "grad_sync"
    OPTIMIZER = "optimizer"


@dataclass(frozen=True)
class PhaseSeconds:
    """One step of one rank, split by phase; ``seconds`` is their sum."""

    seconds: float
    compute_s: float
    pipeline_wait_s: float
    grad_sync_s: float
    optimizer_s: float
    idle_s: float

    @staticmethod
    def of(seconds: float, totals: dict[Phase, float]) -> PhaseSeconds:
        """The step of ``seconds`` whose timed phases add up to ``totals``; idle is the rest
        (never negative: the phases are disjoint intervals of the step)."""
        busy = {p: totals.get(p, 0.0) for p in Phase}
        idle = max(0.0, seconds - sum(busy.values()))
        return PhaseSeconds(sum(busy.values()) + idle, busy[Phase.COMPUTE],
                            busy[Phase.PIPELINE_WAIT], busy[Phase.GRAD_SYNC],
                            busy[Phase.OPTIMIZER], idle)


@dataclass(frozen=True)
class StepTiming:
    """What a clock says about one step: ``measured`` is this host's wall clock;
    ``emulated`` the emulated chips' time (None for a plain run)."""

    measured: PhaseSeconds
    emulated: PhaseSeconds | None = None
    dilation: float | None = None
    padding_s: float = 0.0  # emulation: slept in slots and emulated links (inside phases)
    overruns: int = 0  # compute/optimizer phases whose real work ran past their slot
    compute_overruns: int = 0  # of them, forward and backward (compute) phases
    lost_s: float = 0.0  # how much later than its emulated chip the rank finished its work


@dataclass(frozen=True)
class Span:
    """One timed phase: wall ``begin`` (the body starts) to ``end``; ``chip_start`` is where
    its time on the emulated chip starts (a chained slot starts where the last phase ended)."""

    phase: Phase
    begin: float
    end: float
    chip_start: float


class WallClock:
    """The real clock: each phase lasts what it lasts; it is measured, nothing more."""

    stamps_messages = False  # whether sends must carry their send time (emulated links)
    # fault injection (runtime.faults.SLOW_ENV): compute phases last this many times as long
    compute_factor = 1.0

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync or _nothing
        self._spans: list[Span] = []
        self._begin = time.perf_counter()

    @property
    def dilation(self) -> float | None:
        return None

    def start_step(self) -> None:
        self._spans, self._begin = [], time.perf_counter()

    @contextmanager
    def phase(self, phase: Phase, action: Action | None = None,
              run: Sequence[str] = ()) -> Iterator[None]:
        """Time the body as ``phase``. ``action``: the schedule's action it executes (F, B,
        RA, RG, AR, OPT); ``run``: the segments an AR reduces as one collective. A body that
        raises is not recorded."""
        begin = time.perf_counter()
        yield
        self.sync()
        if phase is Phase.COMPUTE and self.compute_factor != 1.0:  # an injected slow chip
            time.sleep((self.compute_factor - 1.0) * (time.perf_counter() - begin))
        self.record(phase, begin, time.perf_counter())

    def record(self, phase: Phase, begin: float, end: float,
               chip_start: float | None = None) -> None:
        self._spans.append(Span(phase, begin, end, begin if chip_start is None else chip_start))

    @property
    def last_phase(self) -> Phase | None:
        """The phase timed last in this step (None at its start)."""
        return self._spans[-1].phase if self._spans else None

    @property
    def last_end(self) -> float:
        return self._spans[-1].end if self._spans else self._begin

    def delivered(self, action: Action, sent_at: float | None) -> None:
        """A message of ``action`` (RA, RG) sent at ``sent_at`` has arrived: nothing to do."""

    def finish_step(self) -> StepTiming:
        return StepTiming(self.measured(time.perf_counter()))

    def measured(self, end: float) -> PhaseSeconds:
        totals: dict[Phase, float] = {}
        for s in self._spans:
            totals[s.phase] = totals.get(s.phase, 0.0) + (s.end - s.begin)
        return PhaseSeconds.of(end - self._begin, totals)

    @property
    def spans(self) -> tuple[Span, ...]:
        return tuple(self._spans)

    def after_step(self, step: int) -> None:
        """Between steps (not part of either): nothing for a real clock."""

    def raise_dilation_to(self, dilation: float) -> None:
        """Another plan of a side-by-side run raised its dilation: nothing to follow."""


def _nothing() -> None:
    return None


def stream_sync(device: torch.device) -> Callable[[], None] | None:
    """Waits for the work queued on ``device``'s current stream (None on the CPU, whose
    operations are done when they return)."""
    if device.type == "cpu":
        return None
    import torch

    stream = torch.accelerator.current_stream(device)
    return stream.synchronize
