"""The schedule's printable text form, and its parser (they round-trip).

    # polychip schedule 1f1b virtual_stages=1
    r0 (R0 S0): F0 SA0>r1 F1 SA1>r1 RG0<r1 B0 RG1<r1 B1 AR[emb] OPT
    r1+r2 (R0 S1): RA0<r0 F0 B0 SG0>r0 RA1<r0 F1 B1 SG1>r0 AR[head] OPT
    AR[head]: r1 r5

One line per stage program: its ranks (TP group joined by +, leader first), replica and
stage, then its actions; then one line per all-reduce segment naming the leader ranks of
the stages that hold it. Grammar of an action in `polychip.plan.schedule`.
"""

from __future__ import annotations

import re

from polychip.plan.schedule import Action, Op, Schedule, StageProgram
from polychip.spec.errors import PolychipError

_HEADER = re.compile(r"# polychip schedule (\S+) virtual_stages=(\d+)$")
_PROGRAM = re.compile(r"(r\d+(?:\+r\d+)*) \(R(\d+) S(\d+)\):(.*)$")
_GROUP = re.compile(r"AR\[([^\]]+)\]:((?: r\d+)*)$")
_ACTION = re.compile(r"(SA|RA|SG|RG|F|B|W)(\d+)(?:\.(\d+))?(?:([<>])r(\d+))?$")
_DIRECTION = {Op.SEND_ACT: ">", Op.SEND_GRAD: ">", Op.RECV_ACT: "<", Op.RECV_GRAD: "<"}


class ScheduleTextError(PolychipError):
    """Text that is not a polychip schedule; says which line and which token."""


def format_schedule(schedule: Schedule) -> str:
    lines = [f"# polychip schedule {schedule.kind} virtual_stages={schedule.virtual_stages}"]
    for prog in schedule.programs:
        ranks = "+".join(f"r{r}" for r in prog.ranks)
        body = " ".join(str(a) for a in prog.actions)
        lines.append(f"{ranks} (R{prog.replica} S{prog.stage}): {body}")
    for name, leaders in schedule.groups.items():
        lines.append(f"AR[{name}]: " + " ".join(f"r{r}" for r in leaders))
    return "\n".join(lines) + "\n"


def parse_action(token: str) -> Action:
    if token == "OPT":
        return Action(Op.OPTIMIZER)
    if token.startswith("AR[") and token.endswith("]") and len(token) > 4:
        return Action(Op.ALLREDUCE, segment=token[3:-1])
    m = _ACTION.match(token)
    if m is None:
        raise ScheduleTextError(f"{token!r} is not an action (F3, B3, SA3>r5, AR[0:8], OPT…)")
    op = Op(m.group(1))
    micro, chunk = int(m.group(2)), int(m.group(3) or 0)
    want = _DIRECTION.get(op)
    if want != m.group(4):  # a send names its target with >, a receive its source with <
        need = f"a peer as {want}rN" if want else "no peer"
        raise ScheduleTextError(f"{token!r}: {op.name} takes {need}")
    return Action(op, micro, chunk, int(m.group(5)) if want else -1)


def parse_schedule(text: str) -> Schedule:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    head = _HEADER.match(lines[0]) if lines else None
    if head is None:
        raise ScheduleTextError(
            "line 1: a schedule starts with '# polychip schedule KIND virtual_stages=N'"
        )
    programs: list[StageProgram] = []
    groups: dict[str, tuple[int, ...]] = {}
    for no, line in enumerate(lines[1:], start=2):
        if m := _PROGRAM.match(line):
            ranks = tuple(int(r[1:]) for r in m.group(1).split("+"))
            try:
                actions = tuple(parse_action(t) for t in m.group(4).split())
            except ScheduleTextError as exc:
                raise ScheduleTextError(f"line {no}: {exc}") from None
            programs.append(StageProgram(int(m.group(2)), int(m.group(3)), ranks, actions))
        elif m := _GROUP.match(line):
            groups[m.group(1)] = tuple(int(r[1:]) for r in m.group(2).split())
        else:
            raise ScheduleTextError(
                f"line {no}: {line[:40]!r} is neither 'rN (Ri Sj): actions' nor 'AR[seg]: rN …'"
            )
    return Schedule(head.group(1), int(head.group(2)), tuple(programs), groups)
