"""A step that cannot finish: say which ranks wait for what, and why it never comes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from polychip.plan.schedule import Action, Op
from polychip.spec.errors import PolychipError

if TYPE_CHECKING:
    from polychip.simulator.engine import Engine
    from polychip.simulator.state import Prog


class SimulationDeadlock(PolychipError):
    """The schedule cannot finish: a receive no send matches, or a cycle of waits."""


def _who(p: Prog) -> str:
    return f"r{p.leader} (replica {p.replica} stage {p.stage})"


def _expected_send(p: Prog, a: Action) -> Action:
    """The send that would satisfy receive `a` of program `p`."""
    j = a.chunk * p.num_stages + p.stage
    src = j - 1 if a.op is Op.RECV_ACT else j + 1
    op = Op.SEND_ACT if a.op is Op.RECV_ACT else Op.SEND_GRAD
    return Action(op, a.micro, src // p.num_stages, p.leader)


def _why(p: Prog, eng: Engine) -> str:
    a = p.actions[p.pc]
    if a.op is Op.ALLREDUCE:
        coll = eng.colls[a.segment]
        late = sorted(q.leader for q in coll.needed if q not in coll.arrived)
        if not late:
            return f"{_who(p)} waits at {a} until every pipeline has finished its backward"
        return f"{_who(p)} waits at {a} for " + ", ".join(f"r{r}" for r in late)
    peer = eng.by_leader.get(a.peer)
    if peer is None:
        return f"{_who(p)} waits at {a}, but r{a.peer} leads no stage"
    key = eng.recv_key(p, a)
    sends = [b for b in peer.actions if b.op in (Op.SEND_ACT, Op.SEND_GRAD)]
    if not any(eng.send_key(peer, b) == key for b in sends):
        return f"{_who(p)} waits at {a}, but r{a.peer} never sends {_expected_send(p, a)}"
    if peer.done_t is not None:
        return f"{_who(p)} waits at {a}; r{a.peer} finished without reaching its send"
    return f"{_who(p)} waits at {a}; r{a.peer} is itself stuck at {peer.actions[peer.pc]}"


def describe_deadlock(stuck: list[Prog], eng: Engine) -> str:
    lines = [_why(p, eng) for p in stuck[:6]]
    more = f" (and {len(stuck) - 6} more stuck stages)" if len(stuck) > 6 else ""
    return "schedule deadlocks: " + "; ".join(lines) + more
