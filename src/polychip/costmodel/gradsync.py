"""Data-parallel gradient sync, priced from the one description of each collective
(`polychip.plan.collectives`): docs/cost-model.md, "Data-parallel gradient sync".

Every gradient segment (`polychip.plan.segments`) is combined among the stages holding it,
in *pieces* (one rank of every holder stage each; several when the holders' TP degrees
differ): an all-reduce, or under ZeRO-1 a reduce-scatter of the gradient and, after the
optimizer step, an all-gather of the parameters. Each step of a description is a set of
rings; a ring visits its ranks in node order, so each ring edge is a *hop* over one link:
a chip's scale-up link inside a node, the nodes' NICs between nodes, and across islands the
NICs plus a copy of the chunk to host memory and back. The hops of one step run together
and share what they cross -- a NIC side among the hops crossing it, a chip's link among
its own hops -- equally; the step lasts as long as its slowest hop; steps follow each other.
The simulator replays the same hops (`simulator/collectives.py`) with the NIC shares
recomputed as flows come and go: alone, they agree to round-off.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from polychip.costmodel.comm import LinkKind
from polychip.plan.collectives import BRIDGE, Collective, Kind, Step, describe
from polychip.plan.plan import Replica, Stage, replica_stage_ranks
from polychip.plan.segments import Segment, pieces_of, segments_of

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel

Where = Mapping[int, tuple[int, str]]  # rank -> (node, chip)


class Hop(NamedTuple):
    """One ring edge of one step: ``src`` sends ``n_bytes`` to ``dst`` over ``kind``."""

    src: int
    dst: int
    src_node: int
    dst_node: int
    kind: LinkKind
    n_bytes: float
    bw_bytes_per_s: float  # the link's (CostModel.link), before sharing
    latency_s: float  # the ring's steps x the link's latency
    copy_s: float  # bridge: the chunk to host memory and back (half before, half after)
    sides: tuple[tuple[tuple, float], ...]  # (what it crosses, that one's bandwidth)

    def transfer_s(self, rate: float) -> float:
        return self.n_bytes / rate

    def time_s(self, rate: float) -> float:
        return self.latency_s + self.copy_s + self.transfer_s(rate)


def step_name(step: Step) -> str:
    """"island reduce-scatter", "bridge all-reduce", ..."""
    return f"{step.link} {step.op.replace('_', '-')}"


def collective_hops(cm: CostModel, coll: Collective, where: Where, n_bytes: float
                    ) -> list[list[Hop]]:
    """Per step of ``coll`` on a buffer of ``n_bytes``: its hops."""
    host = cm.cluster.network.host_copy_bw_bytes_per_s
    links: dict[tuple[int, int], tuple] = {}  # plans hold thousands of ranks on few nodes
    out = []
    for step in coll.steps:
        hops = []
        for g, (sent_part, size, steps) in zip(step.groups, step.figures, strict=True):
            ring = sorted(g.ranks, key=lambda r: (where[r][0], r))
            sent = sent_part * n_bytes
            copy = 2 * size * n_bytes / host if step.link == BRIDGE else 0.0
            measured = _measured_ring_bw(cm, step, g.ranks, where, size * n_bytes)
            for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
                na, nb = where[a][0], where[b][0]
                link = links.get((na, nb))
                if link is None:
                    link = links[(na, nb)] = (*cm.link(na, nb), cm.nic_bw(na), cm.nic_bw(nb))
                kind, bw, lat, nic_a, nic_b = link
                if measured is not None:  # the node's collective as a profile measured it
                    bw, lat = measured, 0.0
                sides = ((("out", a), bw), (("in", b), bw)) if na == nb else (
                    (("tx", na), nic_a), (("rx", nb), nic_b))
                hops.append(Hop(a, b, na, nb, kind, sent, bw, steps * lat, copy, sides))
        out.append(hops)
    return out


def _measured_ring_bw(cm: CostModel, step: Step, ranks: Sequence[int], where: Where,
                      n_bytes: float) -> float | None:
    """A ring inside one node of one chip type whose collective (`step.op` over these ranks,
    on a tensor of `n_bytes`) a profile measured: each hop's bandwidth that makes the ring
    last the measured time (its latency included), else None (the link's figures)."""
    places = {where[r] for r in ranks}
    if cm.profile is None or len(places) != 1 or len(ranks) < 2:
        return None
    (_, chip), = places
    seconds = cm.profile.collective_s(chip, step.op, len(ranks), n_bytes)
    if seconds is None or seconds <= 0:
        return None
    factor = 2 if step.op == "all_reduce" else 1
    return factor * (len(ranks) - 1) / len(ranks) * n_bytes / seconds


def step_rates(hops: Sequence[Hop]) -> list[float]:
    """Each hop's bandwidth when the step's hops share what they cross equally: the link's,
    or less where a NIC side (or a chip's link) carries several of them."""
    load: Counter = Counter(side for h in hops for side, _ in h.sides)
    return [min(h.bw_bytes_per_s, *(bw / load[side] for side, bw in h.sides)) for h in hops]


def steps_time_s(steps: Sequence[tuple[str, Sequence[Hop]]]) -> float:
    """Steps one after the other, each as long as its slowest hop."""
    return sum(max((h.time_s(r) for h, r in zip(s, step_rates(s), strict=True)), default=0.0)
               for _, s in steps)


def segment_hops(cm: CostModel, replicas: Sequence[Replica], seg: Segment, kind: Kind,
                 bytes_per_param: float) -> list[tuple[str, list[Hop]]]:
    """Every piece of ``seg`` run side by side: per step, its name and the hops of all
    pieces (a segment's pieces have the same steps)."""
    stage_ranks = replica_stage_ranks(replicas)
    where = {r: (st.node, st.chip) for (ri, si), ranks in stage_ranks.items()
             for st in (replicas[ri].stages[si],) for r in ranks}
    pieces = pieces_of(seg, stage_ranks)
    n_bytes = bytes_per_param * seg.num_params(cm.model) / pieces[0].num
    steps: list[tuple[str, list[Hop]]] = []
    for piece in pieces:
        islands: dict[str, list[int]] = {}
        for r in piece.ranks:
            islands.setdefault(cm.chip(where[r][1]).island, []).append(r)
        coll = describe(kind, tuple(tuple(sorted(i)) for i in islands.values()))
        for i, hops in enumerate(collective_hops(cm, coll, where, n_bytes)):
            if i == len(steps):
                steps.append((step_name(coll.steps[i]), []))
            steps[i][1].extend(hops)
    return steps


def segment_sync_s(cm: CostModel, replicas: Sequence[Replica], seg: Segment,
                   zero1: bool = False) -> float:
    """The segment's gradient sync, uncontended: an all-reduce in the job's reduce dtype, or
    (ZeRO-1) its reduce-scatter plus the all-gather of the parameters in the compute dtype."""
    if len(seg.holders) <= 1:
        return 0.0
    # the time depends only on how the holders sit: their nodes' order and groups (NICs,
    # links), chips and TP degrees -- plans under search repeat that with other nodes
    stages = [replicas[ri].stages[si] for ri, si in seg.holders]
    order = {n: i for i, n in enumerate(sorted({st.node for st in stages}))}
    key = (seg.num_params(cm.model), zero1, tuple(
        (order[st.node], cm.nodes[st.node].group.index, st.chip, st.tp) for st in stages))
    hit = cm.sync_cache.get(key)
    if hit is not None:
        return hit
    job = cm.job
    if not zero1:
        t = piece_steps_time_s(cm, stages, seg, "all-reduce", job.reduce_bytes)
    else:
        t = (piece_steps_time_s(cm, stages, seg, "reduce-scatter", job.reduce_bytes)
             + piece_steps_time_s(cm, stages, seg, "all-gather", job.compute_bytes))
    cm.sync_cache[key] = t
    return t


def piece_steps_time_s(cm: CostModel, stages: Sequence[Stage], seg: Segment, kind: Kind,
                       bytes_per_param: float) -> float:
    """``steps_time_s(segment_hops(...))`` (the same floats) from one piece instead of all:
    every piece has one rank of each holder stage (``stages``), so all pieces sit on the same
    nodes in the same order and their hops match one for one; of a piece's hops, a NIC side
    carries ``num`` (pieces) times as many, a rank's own link ``num / tp`` times (a stage of
    degree tp shares each rank among that many pieces). Holders stand for their ranks (both
    ascend in holder order), so a description serves every plan with the same islands."""
    num = math.lcm(*(st.tp for st in stages))
    n_bytes = bytes_per_param * seg.num_params(cm.model) / num
    where = {h: (st.node, st.chip) for h, st in enumerate(stages)}
    shared = [num // st.tp for st in stages]
    islands: dict[str, list[int]] = {}
    for h, st in enumerate(stages):
        islands.setdefault(cm.chip(st.chip).island, []).append(h)
    coll = describe(kind, tuple(tuple(i) for i in islands.values()))
    total = 0
    for hops in collective_hops(cm, coll, where, n_bytes):
        load: Counter = Counter()
        for h in hops:
            for side, _ in h.sides:
                load[side] += shared[side[1]] if side[0] in ("out", "in") else num
        total += max((h.time_s(min(h.bw_bytes_per_s, *(bw / load[side] for side, bw in h.sides)))
                      for h in hops), default=0.0)
    return total


def exposed_sync_s(cm: CostModel, replicas: Sequence[Replica], segments: Sequence[Segment],
                   ends: dict[tuple[int, int], float], pipeline_s: float,
                   zero1: bool = False) -> float:
    """The gradient sync left after the slowest pipeline. Every stage syncs its segments in
    the one global order (head, layers from the last down, embedding); a segment starts once
    every stage holding it has finished its last backward (``ends``: (replica, stage) ->
    seconds; all ``pipeline_s`` without overlap) and its sync of the segments before: what
    the simulator's ``AR[...]`` actions do, uncontended."""
    ready = dict(ends)
    for seg in segments:
        if len(seg.holders) > 1:
            done = max(ready[h] for h in seg.holders) + segment_sync_s(cm, replicas, seg, zero1)
            for h in seg.holders:
                ready[h] = done
    return max(0.0, max(ready.values(), default=0.0) - pipeline_s)


def stage_ends(cm: CostModel, replica: Replica, span_s: float) -> list[float]:
    """When each stage finishes its last backward, in a pipeline of ``span_s``: stage 0
    last; stage i earlier by the backwards and gradient transfers of the stages before it
    (the last micro-batch's gradient walks back through them)."""
    ends = [span_s]
    for si in range(1, replica.num_stages):
        back = cm.times_of(replica, si - 1).bwd_s + cm.boundary_time_s(replica, si - 1)
        ends.append(ends[-1] - back)
    return ends


def dp_sync_time_s(cm: CostModel, replicas: Sequence[Replica], zero1: bool,
                   virtual_stages: int, schedule: str, overlap: bool) -> float:
    """With overlap, a stage's segments start as soon as every stage holding them has
    finished its last backward (`stage_ends`); else after every pipeline."""
    spans = {ri: cm.pipeline_time_s(r, schedule)[0] for ri, r in enumerate(replicas)}
    pipeline_s = max(spans.values(), default=0.0)
    ends = {
        (ri, si): (e if overlap else pipeline_s)
        for ri, r in enumerate(replicas)
        for si, e in enumerate(stage_ends(cm, r, spans[ri]))
    }
    segments = segments_of(replicas, cm.model, virtual_stages)  # 1 unless interleaved
    return exposed_sync_s(cm, replicas, segments, ends, pipeline_s, zero1)
