"""One training step as ordered actions per stage: what the simulator replays and the
runtime executes.

A *program* is the action list of one pipeline stage of one replica. The stage's tensor-
parallel ranks execute it together: compute actions (F, B, OPT) are collective over the TP
group, and only the group's leader (its lowest rank) sends and receives across stages;
peers are named by their leader. Actions:

  F3 / B3        forward / backward of micro-batch 3 on this stage (F3.1: on model chunk 1,
                 interleaved 1F1B only); under zb-h1, B3 is the input-gradient half only
  W3             zb-h1 only: the weight-gradient half of micro-batch 3's backward
  SA3>r5 RA3<r2  send activations of micro-batch 3 to r5 / receive them from r2
  SG3>r2 RG3<r5  send the input gradient to r2 / receive the output gradient from r5
  AR[0:20]       all-reduce the gradient of layers [0, 20) among every stage holding them
                 (AR[emb], AR[head]: the embedding, the final norm + output head)
  OPT            optimizer step

Execution rules, under which every schedule built here is deadlock-free by construction:
a send never blocks its sender (isend; a runtime whose sends rendezvous fuses each send
with the receive from the same peer that follows it, as Megatron's
send_forward_recv_backward does); a receive blocks until its data is there; all-reduces
are issued after the rank's last backward, in one global order (head, layers from the last
down, embedding), so two ranks never wait on each other's collectives crosswise.

Interleaved 1F1B (virtual_stages v > 1): stage p holds v chunks of (its layers / v) each;
virtual stage c * S + p runs chunk c of stage p, and virtual stages take consecutive
layers in that order (`chunk_layers`). The plan's stage layer ranges then give each stage's
layer *count*; the layers a chunk actually holds come from `chunk_layers`.

Zero bubble ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism"; the order of
torch.distributed.pipelining's ScheduleInterleavedZeroBubble with one local stage): the
backward splits into B (the input gradient, which the previous stage waits for) and W (the
weight gradient, which nobody waits for). Stage p runs 1F1B's order with B in place of the
backward and delays each W by p backwards, so the later stages, idle at the end of 1F1B,
fill that time with their deferred W; every stage then holds up to S micro-batches'
activations (1F1B's first stage: the pipeline's peak is unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from polychip.plan.plan import Plan
from polychip.plan.segments import grad_segments
from polychip.spec.errors import PolychipError


class Op(StrEnum):
    FORWARD = "F"
    BACKWARD = "B"
    SEND_ACT = "SA"
    RECV_ACT = "RA"
    SEND_GRAD = "SG"
    RECV_GRAD = "RG"
    ALLREDUCE = "AR"
    OPTIMIZER = "OPT"
    WEIGHT = "W"  # zb-h1: the weight-gradient half of a backward


COMPUTE = (Op.FORWARD, Op.BACKWARD, Op.WEIGHT)
SCHEDULE_KINDS = ("1f1b", "gpipe", "interleaved-1f1b", "zb-h1")


SENDS = (Op.SEND_ACT, Op.SEND_GRAD)
RECVS = (Op.RECV_ACT, Op.RECV_GRAD)


@dataclass(frozen=True, slots=True)
class Action:
    op: Op
    micro: int = -1  # micro-batch (compute, send, receive)
    chunk: int = 0  # this rank's model chunk (interleaved 1F1B); 0 otherwise
    peer: int = -1  # leader rank of the other stage (send, receive)
    segment: str = ""  # all-reduce: "0:20", "emb" or "head"

    def __str__(self) -> str:
        if self.op is Op.ALLREDUCE:
            return f"AR[{self.segment}]"
        if self.op is Op.OPTIMIZER:
            return "OPT"
        text = f"{self.op}{self.micro}" + (f".{self.chunk}" if self.chunk else "")
        if self.op in SENDS:
            return f"{text}>r{self.peer}"
        if self.op in RECVS:
            return f"{text}<r{self.peer}"
        return text


@dataclass(frozen=True)
class StageProgram:
    """The actions of one stage; its TP ranks run them together, `ranks[0]` leads."""

    replica: int
    stage: int
    ranks: tuple[int, ...]
    actions: tuple[Action, ...]

    @property
    def leader(self) -> int:
        return self.ranks[0]


@dataclass(frozen=True)
class Schedule:
    kind: str  # one of SCHEDULE_KINDS
    virtual_stages: int
    programs: tuple[StageProgram, ...]  # ordered by leader rank
    groups: dict[str, tuple[int, ...]]  # all-reduce segment -> leader ranks holding it

    def program_of(self, rank: int) -> StageProgram:
        for prog in self.programs:
            if rank in prog.ranks:
                return prog
        raise KeyError(f"rank {rank} is in no program of this schedule")

    def actions_of(self, rank: int) -> tuple[Action, ...]:
        return self.program_of(rank).actions


def compute_order(kind: str, stage: int, num_stages: int, num_micro: int, v: int = 1):
    """[(is_forward, micro_batch, chunk)] of one stage, in execution order."""
    p, S, M = stage, num_stages, num_micro
    if kind == "gpipe":
        return [(True, m, 0) for m in range(M)] + [(False, m, 0) for m in range(M)]
    if kind == "1f1b":
        warm = min(S - p - 1, M)
        out = [(True, m, 0) for m in range(warm)]
        for i in range(M - warm):
            out += [(True, warm + i, 0), (False, i, 0)]
        return out + [(False, m, 0) for m in range(M - warm, M)]
    # Interleaved 1F1B (Narayanan et al. 2021; Megatron-LM's order): micro-batches in
    # groups of S, each group through chunk 0, then chunk 1, ...; backward chunks reversed.
    total = M * v

    def unit(k: int, forward: bool) -> tuple[bool, int, int]:
        c = (k // S) % v
        return forward, (k // (S * v)) * S + k % S, c if forward else v - 1 - c

    warm = min(2 * (S - p - 1) + (v - 1) * S, total)
    out = [unit(k, True) for k in range(warm)]
    for k in range(total - warm):
        out += [unit(warm + k, True), unit(k, False)]
    return out + [unit(k, False) for k in range(total - warm, total)]


def zb_h1_order(stage: int, num_stages: int, num_micro: int) -> list[tuple[Op, int]]:
    """[(F, B or W, micro_batch)] of one stage under ZB-H1, in execution order: 1F1B's
    order with B for the backward, each W delayed by `stage` backwards, the rest at the end."""
    p, S, M = stage, num_stages, num_micro
    warm = min(S - p - 1, M)
    out = [(Op.FORWARD, m) for m in range(warm)]
    weights = 0

    def backward(m: int) -> None:
        nonlocal weights
        out.append((Op.BACKWARD, m))
        if m >= p:  # p backwards done before this one's: W of the oldest pending
            out.append((Op.WEIGHT, weights))
            weights += 1

    for i in range(M - warm):
        out.append((Op.FORWARD, warm + i))
        backward(i)
    for m in range(M - warm, M):
        backward(m)
    return out + [(Op.WEIGHT, m) for m in range(weights, M)]


def _check_kind(plan: Plan) -> None:
    if plan.schedule not in SCHEDULE_KINDS:
        raise PolychipError(f"schedule {plan.schedule!r}: use one of {', '.join(SCHEDULE_KINDS)}")
    if plan.schedule != "interleaved-1f1b" or plan.virtual_stages == 1:
        return
    for ri, rep in enumerate(plan.replicas):
        if rep.num_micro_batches % rep.num_stages:
            raise PolychipError(
                f"replicas[{ri}]: interleaved-1f1b runs micro-batches in groups of the "
                f"{rep.num_stages} stages, but there are {rep.num_micro_batches}; make the "
                f"micro-batch count a multiple of {rep.num_stages} or use 1f1b"
            )


def build_schedule(plan: Plan, replicas: Iterable[int] | None = None) -> Schedule:
    """The schedule of `plan` (of only the given replicas, when named)."""
    _check_kind(plan)
    v = plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1
    kind = "1f1b" if plan.schedule == "interleaved-1f1b" and v == 1 else plan.schedule
    stage_ranks = plan.stage_rank_map()
    leaders = [[stage_ranks[(ri, si)][0] for si in range(rep.num_stages)]
               for ri, rep in enumerate(plan.replicas)]
    segments = grad_segments(plan)
    held: dict[tuple[int, int], list[str]] = {}
    for seg in segments:
        for holder in seg.holders:
            held.setdefault(holder, []).append(seg.name)
    wanted = range(len(plan.replicas)) if replicas is None else sorted(set(replicas))
    programs = []
    for ri in wanted:
        rep = plan.replicas[ri]
        for si in range(rep.num_stages):
            acts = _pipeline_actions(kind, si, rep.num_micro_batches, v, leaders[ri])
            ranks = stage_ranks[(ri, si)]
            acts += [Action(Op.ALLREDUCE, segment=name) for name in held.get((ri, si), [])]
            acts.append(Action(Op.OPTIMIZER))
            programs.append(StageProgram(ri, si, ranks, tuple(acts)))
    groups = {s.name: tuple(leaders[ri][si] for ri, si in s.holders) for s in segments}
    return Schedule(kind, v, tuple(programs), groups)


def _pipeline_actions(kind: str, p: int, M: int, v: int, leaders: list[int]) -> list[Action]:
    """Stage p's compute actions with their receives before and sends after; `leaders`:
    the leader rank of each stage of the replica."""
    S = len(leaders)
    last = S * v - 1
    out: list[Action] = []
    if kind == "zb-h1":
        order = [(op is Op.FORWARD, m, 0, op) for op, m in zb_h1_order(p, S, M)]
    else:
        order = [(f, m, c, Op.FORWARD if f else Op.BACKWARD)
                 for f, m, c in compute_order(kind, p, S, M, v)]
    for forward, m, c, op in order:
        if op is Op.WEIGHT:
            out.append(Action(Op.WEIGHT, m))
            continue
        j = c * S + p  # virtual stage
        if forward:
            if j > 0:
                out.append(Action(Op.RECV_ACT, m, c, leaders[(j - 1) % S]))
            out.append(Action(Op.FORWARD, m, c))
            if j < last:
                out.append(Action(Op.SEND_ACT, m, c, leaders[(j + 1) % S]))
        else:
            if j < last:
                out.append(Action(Op.RECV_GRAD, m, c, leaders[(j + 1) % S]))
            out.append(Action(Op.BACKWARD, m, c))
            if j > 0:
                out.append(Action(Op.SEND_GRAD, m, c, leaders[(j - 1) % S]))
    return out
