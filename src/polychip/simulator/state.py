"""What the engine keeps while it replays a step, and what it hands to `timeline`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from polychip.costmodel import CostModel
from polychip.plan.plan import Replica
from polychip.plan.schedule import Action, Op, StageProgram

if TYPE_CHECKING:
    from polychip.simulator.collectives import Phase


class Activity:
    """A span of time on the step's dependency graph; `pred` is what it waited for last,
    so following `pred` from the step's last activity walks the critical path."""

    __slots__ = ("end", "key", "kind", "pred", "start")

    def __init__(self, kind: str, key: Any, start: float, end: float, pred: Activity | None):
        self.kind = kind  # compute, optimizer, transfer, allreduce
        self.key = key  # program index, LinkKind, or segment name
        self.start, self.end, self.pred = start, end, pred


class Prog:
    """A stage program being replayed."""

    def __init__(self, index: int, program: StageProgram, rep: Replica,
                 split_backward: bool = False) -> None:
        self.index, self.program, self.rep = index, program, rep
        # zb-h1: B is the input gradient only, W the weight gradient (and W frees the
        # activations); otherwise B is the whole backward
        self.split_backward = split_backward
        self.replica, self.stage, self.leader = program.replica, program.stage, program.leader
        self.actions = program.actions
        self.num_stages = rep.num_stages
        ops = [a.op for a in self.actions]
        self.pipeline_len = next(
            (i for i, op in enumerate(ops) if op in (Op.ALLREDUCE, Op.OPTIMIZER)), len(ops)
        )
        self.pc = 0
        self.last: Activity | None = None
        self.waiting: tuple[float, str] | None = None
        self.waits: list[tuple[float, float, str]] = []  # receive / all-reduce waits
        # per wait: when what it waited for began (the transfer, or the all-reduce itself);
        # before that the wait is for another stage (its compute, or its arrival at the sync)
        self.wait_began: list[float] = []
        self.spans: list[tuple[float, float, str]] = []  # F, B, OPT
        self.mem: list[tuple[float, int]] = [(0.0, 0)]  # (time, chunk-micro-batches held)
        self.peak_in_flight = 0
        self.compute_busy_s = 0.0
        self.pipeline_end: float | None = None
        self.done_t: float | None = None
        self._times: dict[int, tuple[float, float, float]] = {}

    def compute_s(self, cm: CostModel, a: Action, v: int) -> float:
        times = self._times.get(a.chunk)
        if times is None:
            st = self.rep.stages[self.stage]
            if v == 1:
                t = cm.times_of(self.rep, self.stage)
            else:
                t = cm.stage_times(
                    cm.chip(st.chip),
                    st.num_layers // v,
                    st.tp,
                    self.rep.micro_batch_size,
                    self.stage == 0 and a.chunk == 0,
                    self.stage == self.num_stages - 1 and a.chunk == v - 1,
                    st.recompute,
                )
            # the runtime's host work per micro-batch (reading it: before its forward)
            host = cm.host_times(cm.chip(self.rep.stages[self.stage].chip),
                                 self.rep.micro_batch_size)[0] / v
            if self.split_backward:
                t = t.split_backward()  # (`CostModel.times_of` under zb-h1)
                times = (t.fwd_s + host, t.igrad_s, t.wgrad_s)
            else:
                times = (t.fwd_s + host, t.bwd_s, 0.0)
            self._times[a.chunk] = times
        return times[0] if a.op is Op.FORWARD else times[1] if a.op is Op.BACKWARD else times[2]

    def mem_step(self, t: float, delta: int) -> None:
        held = self.mem[-1][1] + delta
        self.mem.append((t, held))
        self.peak_in_flight = max(self.peak_in_flight, held)


@dataclass(eq=False)
class Coll:
    """One segment's gradient sync: who must arrive, and the steps of its collective."""

    name: str
    needed: set[Prog]
    phases: list[Phase]
    arrived: dict[Prog, tuple[float, Activity | None]] = field(default_factory=dict)
    started: bool = False


@dataclass(eq=False)
class Recording:
    programs: list[Prog]
    classes: tuple  # ReplicaClass
    # start, end, source program, destination program, LinkKind, bytes (with NIC flows)
    transfers: list[tuple] = field(default_factory=list)
    # start, end, segment, phase, source node, destination node, LinkKind, bytes
    hops: list[tuple] = field(default_factory=list)
    collectives: list[tuple] = field(default_factory=list)  # seg, start, end
