"""Emulated chips: the clock ``--emulate`` injects into the stage executor.

Every compute and optimizer phase runs the real mathematics in a fixed-duration slot of
``dilation x`` the cost model's time for the rank's chip and work (under a zero-bubble
schedule a backward's W slot is the cost model's weight-gradient time, its B the rest)
(:class:`polychip.runtime.slots.PhaseClock`); compute phases that follow each other with
nothing to wait for in between have chained slots (a late one is made up by the next); a
message arrives ``dilation x`` its modelled transfer time after it was sent; each gradient
all-reduce is followed by ``dilation x`` its modelled time (the host's own collectives are
nearly free on the emulated clock). The dilation is chosen and raised in
:mod:`polychip.runtime.dilation`.

**Emulated chip time.** The host runs the emulated cluster ``dilation`` times slower, except
for what it really does outside the slots (Python between actions, reading data, posting
sends), which takes its real time. So a step's emulated time is counted phase by phase:

- compute and optimizer: the wall time of their slots / dilation (the cost model's time;
  more when the real work overran its slot); a chained slot starts where the last one ended,
  so host work between back-to-back phases is inside the slots, as on a chip that queues them;
- pipeline waits and gradient sync: wall / dilation (they wait for other ranks' slots and for
  emulated links, which run dilated);
- idle (host work outside any slot): its real duration, unscaled -- the CPU seconds the
  rank's thread spent on it, which is what it costs a host of its own (the wall seconds also
  hold the time the rank waited for a core it shares with the other emulated ranks: an
  artefact of playing several chips on one host).

Dividing the whole wall step by the dilation instead (what earlier versions did) shrinks the
host's real overheads by the dilation and reports, mostly, the cost model against itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from polychip.costmodel.estimate import CostModel
from polychip.plan.plan import Plan
from polychip.plan.schedule import Action, Op
from polychip.plan.segments import grad_segments
from polychip.runtime.clock import Phase, PhaseSeconds, StepTiming, WallClock
from polychip.runtime.slots import ClockSummary, PhaseClock, sleep_until

if TYPE_CHECKING:
    from polychip.runtime.dilation import DilationGovernor

GRADIENT_SYNC = "gradient_sync"
"""The emulated link slot after a real all-reduce (not a compute phase)."""
_SLOT_NAMES = {Op.FORWARD: "forward", Op.BACKWARD: "backward", Op.WEIGHT: "weight",
               Op.OPTIMIZER: "optimizer"}
Failure = Callable[[int | None, str, BaseException], Exception]


@dataclass(frozen=True)
class PhaseTargets:
    """Seconds the cost model gives the emulated chip for each phase of one rank (the
    simulator replays the same figures)."""

    chunk_s: tuple[tuple[float, float], ...]  # (forward, backward) of a micro-batch per chunk
    optimizer_s: float  # one AdamW step over the rank's parameters
    recv_act_s: float  # one micro-batch's activations from the previous stage
    recv_grad_s: float  # their gradient from the next stage
    allreduce_s: dict[str, float] = field(default_factory=dict)  # segment -> its all-reduce
    # zero bubble (zb-h1): the weight-gradient part W of each chunk's backward; B takes the
    # rest. Empty when the schedule does not split the backward.
    wgrad_s: tuple[float, ...] = ()

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

    def of(self, action: Action) -> float:
        """The emulated chip's seconds for a compute or optimizer action."""
        if action.op is Op.OPTIMIZER:
            return self.optimizer_s
        forward, backward = self.chunk_s[action.chunk]
        if action.op is Op.FORWARD:
            return forward
        assert self.wgrad_s or action.op is Op.BACKWARD, "W of an unsplit backward"
        weight = self.wgrad_s[action.chunk] if self.wgrad_s else 0.0
        return weight if action.op is Op.WEIGHT else backward - weight


def phase_targets(plan: Plan, replica: int, stage: int) -> PhaseTargets:
    """The cost model's times (the same ones the planner and the simulator use) for a rank of
    ``plan``: compute (per model chunk under interleaved 1F1B), transfers from its
    neighbours, and each gradient segment's all-reduce among its holders (uncontended).
    Under zb-h1 a backward's W lasts the cost model's ``wgrad_s`` and its B the rest."""
    cost = CostModel(plan.cluster, plan.model, plan.job)
    rep = plan.replicas[replica]
    st, last = rep.stages[stage], rep.num_stages - 1
    v = plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1
    if v == 1:
        times = [cost.times_of(rep, stage, plan.schedule)]
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
        allreduce_s=allreduce,
        wgrad_s=tuple(t.wgrad_s for t in times) if plan.schedule == "zb-h1" else ())


def _compute_overruns(summary: ClockSummary) -> int:
    return sum(p.num_overruns for p in summary.phases
               if p.name in (_SLOT_NAMES[Op.FORWARD], _SLOT_NAMES[Op.BACKWARD],
                             _SLOT_NAMES[Op.WEIGHT]))


class EmulatedClock(WallClock):
    """The clock of an emulated chip: slots, emulated links, and the emulated chip time.

    ``governor``: raises the dilation between steps, on every rank at the same step, when
    overruns cost the emulated chips time (it needs every rank's lateness: one scalar
    all-reduce over the world after each step, outside the step's timing); ``failure`` wraps
    a collective's error (:meth:`polychip.runtime.train.Trainer.failure`)."""

    stamps_messages = True

    def __init__(self, targets: PhaseTargets, dilation: float, *,
                 governor: DilationGovernor | None = None, failure: Failure | None = None,
                 sync: Callable[[], None] | None = None) -> None:
        super().__init__(sync)
        self.targets, self.slots = targets, PhaseClock(dilation)
        self.governor, self.failure = governor, failure
        self._before = self.slots.summary()
        self._delivery_s = 0.0  # slept holding messages until their emulated arrival
        self._cpu_start = self._cpu_end = time.thread_time()
        self._cpu_in_spans = 0.0  # CPU seconds of this thread inside the phases' chip spans
        self._lost_reported = 0.0

    @property
    def dilation(self) -> float:
        return self.slots.dilation

    def start_step(self) -> None:
        super().start_step()
        self._before, self._delivery_s = self.slots.summary(), 0.0
        self._cpu_start = self._cpu_end = time.thread_time()
        self._cpu_in_spans = 0.0

    @contextmanager
    def phase(self, phase: Phase, action: Action | None = None,
              run: Sequence[str] = ()) -> Iterator[None]:
        begin, cpu_begin = time.perf_counter(), time.thread_time()
        chained = phase is Phase.COMPUTE and self.last_phase is Phase.COMPUTE
        if phase in (Phase.COMPUTE, Phase.OPTIMIZER):
            assert action is not None, "a compute phase names its action"
            factor = self.compute_factor if phase is Phase.COMPUTE else 1.0  # a slow chip
            with self.slots.phase(_SLOT_NAMES[action.op], factor * self.targets.of(action),
                                  chain=chained):
                yield
                self.sync()
        else:
            yield
            self.sync()
            if phase is Phase.GRAD_SYNC and run:  # the emulated link after the collective
                with self.slots.phase(GRADIENT_SYNC,
                                      sum(self.targets.allreduce_s[s] for s in run)):
                    pass
        chip_start = self.last_end if chained else begin
        self.record(phase, begin, time.perf_counter(), chip_start)
        cpu_end = time.thread_time()
        self._cpu_in_spans += cpu_end - (self._cpu_end if chained else cpu_begin)
        self._cpu_end = cpu_end

    def delivered(self, action: Action, sent_at: float | None) -> None:
        """Hold a message until ``dilation x`` its modelled transfer after it was sent."""
        assert sent_at is not None, "emulated links need time-stamped messages"
        modelled = (self.targets.recv_act_s if action.op is Op.RECV_ACT
                    else self.targets.recv_grad_s)
        self._delivery_s += sleep_until(sent_at + self.dilation * modelled)

    def finish_step(self) -> StepTiming:
        end = time.perf_counter()
        after, before, d = self.slots.summary(), self._before, self.dilation
        chip: dict[Phase, float] = {}
        for s in self.spans:
            chip[s.phase] = chip.get(s.phase, 0.0) + (s.end - s.chip_start) / d
        # host work outside the slots: the CPU seconds it took (what it costs a host of its
        # own), not the wall seconds, which include waiting for a core the emulated ranks share
        idle = max(0.0, time.thread_time() - self._cpu_start - self._cpu_in_spans)
        return StepTiming(
            measured=self.measured(end),
            emulated=PhaseSeconds.of(sum(chip.values()) + idle, chip),
            dilation=d, padding_s=after.padded_s - before.padded_s + self._delivery_s,
            overruns=after.num_overruns - before.num_overruns,
            compute_overruns=_compute_overruns(after) - _compute_overruns(before),
            lost_s=after.lost_s - before.lost_s)

    def after_step(self, step: int) -> None:
        """Sum every rank's lateness of this step (one scalar over the world: a pipeline's
        gradient segments do not reach every rank) and let the governor decide, with the same
        inputs, the same way everywhere."""
        if self.governor is None:
            return
        lost = self.slots.summary().lost_s
        late = torch.tensor([lost - self._lost_reported], dtype=torch.float64)
        self._lost_reported = lost
        try:
            dist.all_reduce(late, op=dist.ReduceOp.SUM)
        except RuntimeError as exc:
            if self.failure is None:
                raise
            raise self.failure(step, "summing the emulated lateness", exc) from exc
        raised = self.governor.observe(float(late.item()))
        if raised is not None:
            self.slots.set_dilation(raised)

    def raise_dilation_to(self, dilation: float) -> None:
        """Another plan of this job had to raise the dilation: go on from there too."""
        if dilation > self.dilation:
            self.slots.set_dilation(dilation)
            if self.governor is not None:
                self.governor.dilation = dilation
