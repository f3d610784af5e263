"""Discrete-event replay of one training step of a plan, action by action.

Each stage program (`polychip.plan.schedule`) runs its actions in order on its devices:
F / B / W / OPT take the cost model's seconds (under zb-h1, B is the backward less its
weight-gradient part and W that part, `StageTimes.wgrad_s`; elsewhere B is the whole
backward); a send starts a transfer and moves on; a
receive waits for its transfer; an all-reduce waits until every stage holding the segment
has arrived (and, without overlap, until every pipeline has finished its backward), then
runs the steps of its collective (`collectives`). Transfers share NICs (`network`).

Replicas that are alike (same shape, same node groups, same node pattern) run in lockstep,
so one representative per class is replayed; its transfers load every NIC its class
mates use as much as all of them do, and the all-reduces involve every real stage.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass

from polychip.costmodel import CostModel, LinkKind, p2p_time_s
from polychip.plan.plan import Plan
from polychip.plan.schedule import COMPUTE, Action, Op, Schedule
from polychip.plan.segments import grad_segments
from polychip.simulator.collectives import sync_phases
from polychip.simulator.deadlock import SimulationDeadlock, describe_deadlock
from polychip.simulator.network import Fabric, Leg, run_chain
from polychip.simulator.state import Activity, Coll, Prog, Recording


@dataclass(frozen=True)
class ReplicaClass:
    rep: int  # the replica replayed
    members: tuple[int, ...]  # every replica it stands for, itself included


def replica_classes(plan: Plan) -> tuple[ReplicaClass, ...]:
    groups: dict[tuple, list[int]] = {}
    nodes = plan.cluster.nodes
    for ri, r in enumerate(plan.replicas):
        where = [s.node for s in r.stages]
        key = (
            r.shape_key(),
            tuple(nodes[n].group.index for n in where),
            tuple(where.index(n) for n in where),  # which stages share a node
        )
        groups.setdefault(key, []).append(ri)
    return tuple(ReplicaClass(m[0], tuple(m)) for m in groups.values())


class Engine:
    def __init__(
        self,
        plan: Plan,
        cm: CostModel,
        schedule: Schedule,
        classes: tuple[ReplicaClass, ...],
        overlap: bool,
    ) -> None:
        self.plan, self.cm, self.overlap = plan, cm, overlap
        self.heap: list = []
        self._seq = itertools.count()
        nics = [cm.nic_bw(i) for i in range(len(cm.nodes))]
        self.fabric = Fabric(nics, self.post, cm.measured_link_bw)
        self.class_of = {ri: c for c in classes for ri in c.members}
        self.v = schedule.virtual_stages
        self.zero_shards = len(plan.replicas) if plan.zero1 else 1
        split = schedule.kind == "zb-h1"
        self.progs = [Prog(i, p, plan.replicas[p.replica], split)
                      for i, p in enumerate(schedule.programs)]
        self.by_leader = {p.leader: p for p in self.progs}
        at = {(p.replica, p.stage): p for p in self.progs}
        for c in classes:
            for si in range(plan.replicas[c.rep].num_stages):
                if (c.rep, si) not in at:
                    raise SimulationDeadlock(
                        f"the schedule has no program for replica {c.rep} stage {si} of the plan"
                    )
        self.colls: dict[str, Coll] = {}
        for seg in grad_segments(plan):
            needed = {at[(self.class_of[ri].rep, si)] for ri, si in seg.holders}
            phases = sync_phases(cm, plan.replicas, seg, plan.zero1)
            self.colls[seg.name] = Coll(seg.name, needed, phases)
        self.messages: dict[tuple, dict] = {}
        self._legs: dict[tuple[int, int], tuple[tuple[Leg, ...], LinkKind]] = {}
        self.passed = 0
        self.barrier: tuple[float, Activity | None] | None = None
        self.rec = Recording(self.progs, classes)

    def post(self, t: float, fn, *args) -> None:
        heapq.heappush(self.heap, (t, next(self._seq), fn, args))

    def run(self) -> Recording:
        for prog in self.progs:
            self.post(0.0, self.step, prog)
        while self.heap:
            t, _, fn, args = heapq.heappop(self.heap)
            fn(t, *args)
        stuck = [p for p in self.progs if p.done_t is None]
        if stuck:
            raise SimulationDeadlock(describe_deadlock(stuck, self))
        return self.rec

    # ---- one program ------------------------------------------------------------------
    def step(self, now: float, prog: Prog) -> None:
        acts = prog.actions
        while prog.pc < len(acts):
            if prog.pc == prog.pipeline_len and prog.pipeline_end is None:
                self._pass_barrier(now, prog)
            a = acts[prog.pc]
            if a.op in COMPUTE or a.op is Op.OPTIMIZER:
                self._compute(now, prog, a)
                return
            if a.op is Op.SEND_ACT or a.op is Op.SEND_GRAD:
                self._send(now, prog, a)
            elif a.op is Op.RECV_ACT or a.op is Op.RECV_GRAD:
                msg = self.messages.setdefault(self.recv_key(prog, a), {})
                if "delivered" not in msg:
                    msg["waiter"], prog.waiting = prog, (now, str(a))
                    return
            elif a.op is Op.ALLREDUCE:
                coll = self.colls.get(a.segment)
                if coll is None or prog not in coll.needed:
                    raise SimulationDeadlock(
                        f"r{prog.leader} (replica {prog.replica} stage {prog.stage}) all-reduces "
                        f"segment {a.segment!r}, which no replica pair shares with it"
                    )
                coll.arrived[prog] = (now, prog.last)
                prog.waiting = (now, str(a))
                self._try_start(now, coll)
                return
            prog.pc += 1
        prog.done_t = now

    def _compute(self, now: float, prog: Prog, a: Action) -> None:
        if a.op is Op.OPTIMIZER:
            d = self.cm.stage_optimizer_time_s(prog.rep, prog.stage, self.zero_shards)
            kind = "optimizer"
        else:
            d = prog.compute_s(self.cm, a, self.v)
            kind = "compute"
            if a.op is Op.FORWARD:
                prog.mem_step(now, +1)
        prog.last = Activity(kind, prog.index, now, now + d, prog.last)
        prog.spans.append((now, now + d, str(a)))
        prog.pc += 1
        if a.op is not Op.OPTIMIZER:
            prog.compute_busy_s += d
        # the activations are freed by the backward, under zb-h1 by the W that needs them
        if a.op is (Op.WEIGHT if prog.split_backward else Op.BACKWARD):
            prog.mem_step(now + d, -1)
        self.post(now + d, self.step, prog)

    def _wake(self, t: float, prog: Prog, cause: Activity) -> None:
        since, token = prog.waiting
        prog.waits.append((since, t, token))
        prog.wait_began.append(max(since, cause.start))
        prog.waiting = None
        prog.last = cause
        prog.pc += 1
        self.post(t, self.step, prog)

    def _pass_barrier(self, now: float, prog: Prog) -> None:
        prog.pipeline_end = now
        self.passed += 1
        if self.passed == len(self.progs):
            self.barrier = (now, prog.last)
            for coll in self.colls.values():
                self._try_start(now, coll)

    # ---- point to point ------------------------------------------------------------------
    def send_key(self, prog: Prog, a: Action) -> tuple:
        j = a.chunk * prog.num_stages + prog.stage
        act = a.op is Op.SEND_ACT
        return (prog.leader, a.peer, act, a.micro, j if act else j - 1)

    def recv_key(self, prog: Prog, a: Action) -> tuple:
        j = a.chunk * prog.num_stages + prog.stage
        act = a.op is Op.RECV_ACT
        return (a.peer, prog.leader, act, a.micro, j - 1 if act else j)

    def _send(self, now: float, prog: Prog, a: Action) -> None:
        dst = self.by_leader.get(a.peer)
        if dst is None:
            raise SimulationDeadlock(
                f"r{prog.leader} (replica {prog.replica} stage {prog.stage}) runs {a}, but "
                f"r{a.peer} leads no stage of this schedule"
            )
        key = self.send_key(prog, a)
        legs, kind = self.legs(prog, dst)
        n = 0.0 if kind is LinkKind.LOCAL else self.cm.activation_bytes(prog.rep.micro_batch_size)
        sent = (now, prog.last, kind, prog, dst, n)
        run_chain(now, legs, self.fabric, self.post, lambda t: self._deliver(t, key, sent))

    def _deliver(self, t: float, key: tuple, sent: tuple) -> None:
        start, pred, kind, src, dst, n_bytes = sent
        msg = self.messages.setdefault(key, {})
        msg["delivered"] = t
        self.rec.transfers.append((start, t, src.index, dst.index, kind, n_bytes))
        waiter = msg.pop("waiter", None)
        if waiter is not None:
            self._wake(t, waiter, Activity("transfer", kind, start, t, pred))

    def legs(self, src: Prog, dst: Prog) -> tuple[tuple[Leg, ...], LinkKind]:
        hit = self._legs.get((src.index, dst.index))
        if hit is not None:
            return hit
        rep, cm = src.rep, self.cm
        a, b = rep.stages[src.stage].node, rep.stages[dst.stage].node
        kind, bw, lat = cm.link(a, b)
        n = cm.activation_bytes(rep.micro_batch_size)
        if src is dst:
            out: tuple[tuple[Leg, ...], LinkKind] = ((), LinkKind.LOCAL)
        elif kind is LinkKind.INTRA_NODE:
            out = ((Leg(p2p_time_s(n, bw, lat)),), kind)
        else:
            mates = [self.plan.replicas[m].stages for m in self.class_of[src.replica].members]
            tx = Counter(st[src.stage].node for st in mates)
            rx = Counter(st[dst.stage].node for st in mates)
            pairs = Counter((st[src.stage].node, st[dst.stage].node) for st in mates)
            loads = tuple(((n_, 0), k) for n_, k in tx.items())
            loads += tuple(((n_, 1), k) for n_, k in rx.items())
            flow = Leg(n_bytes=n, loads=loads, pairs=tuple(pairs.items()))
            if kind is LinkKind.INTER_NODE:
                out = ((Leg(lat), flow), kind)
            else:
                copy = Leg(n / cm.cluster.network.host_copy_bw_bytes_per_s)
                out = ((copy, Leg(lat), flow, copy), kind)
        self._legs[(src.index, dst.index)] = out
        return out

    # ---- gradient all-reduce ---------------------------------------------------------------
    def _try_start(self, now: float, coll: Coll) -> None:
        if coll.started or len(coll.arrived) < len(coll.needed):
            return
        if not self.overlap and self.barrier is None:
            return
        coll.started = True
        pred = max(coll.arrived.values(), key=lambda x: x[0])[1]
        if not self.overlap and self.barrier is not None and self.barrier[0] >= now:
            pred = self.barrier[1]
        self._phase(now, coll, coll.phases, 0, (now, pred))

    def _phase(self, now: float, coll: Coll, phases: list, i: int, began: tuple) -> None:
        if i == len(phases):
            cause = Activity("allreduce", coll.name, began[0], now, began[1])
            self.rec.collectives.append((coll.name, began[0], now))
            for prog in sorted(coll.needed, key=lambda p: p.index):
                self._wake(now, prog, cause)
            return
        name, hops = phases[i]
        left = [len(hops)]

        def done(t: float, hop) -> None:
            self.rec.hops.append(
                (now, t, coll.name, name, hop.src_node, hop.dst_node, hop.kind, hop.n_bytes)
            )
            left[0] -= 1
            if left[0] == 0:
                self._phase(t, coll, phases, i + 1, began)

        for hop, legs in hops:
            run_chain(now, legs, self.fabric, self.post, lambda t, h=hop: done(t, h))
