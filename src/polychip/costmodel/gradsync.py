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
recomputed as flows come and go: alone, they agree to round-off; syncs of stages sharing a
node take turns at its NIC here (`exposed_sync_s`), where the replay shares it. The cost
model prices them from one piece, cached by how the holders sit (`piecesync.py`: the same
floats).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from polychip.costmodel import piecesync
from polychip.costmodel.hops import Hop, Where, measured_ring_bw, ring_edges
from polychip.plan.collectives import BRIDGE, Collective, Kind, Step, describe
from polychip.plan.plan import Replica, replica_stage_ranks
from polychip.plan.segments import Segment, pieces_of, segments_of

if TYPE_CHECKING:
    from polychip.costmodel.classes import ReplicaClasses
    from polychip.costmodel.estimate import CostModel

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
            sent = sent_part * n_bytes
            copy = 2 * size * n_bytes / host if step.link == BRIDGE else 0.0
            measured = measured_ring_bw(cm, step, g.ranks, where, size * n_bytes)
            for a, b, na, nb, kind, bw, lat, sides in ring_edges(cm, g.ranks, where, links,
                                                                 measured):
                hops.append(Hop(a, b, na, nb, kind, sent, bw, steps * lat, copy, sides))
        out.append(hops)
    return out


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
    stages = [replicas[ri].stages[si] for ri, si in seg.holders]
    return piecesync.segment_sync_s(cm, stages, seg.num_params(cm.model), zero1)


def exposed_sync_s(cm: CostModel, classes: ReplicaClasses, segments: Sequence[Segment],
                   ends: dict[tuple[int, int], float], pipeline_s: float,
                   zero1: bool = False) -> float:
    """The gradient sync left after the slowest pipeline. Every stage syncs its segments in
    the one global order (head, layers from the last down, embedding); a segment starts once
    every stage holding it has finished its last backward (``ends``: (class, stage) ->
    seconds, equal for the identical replicas of a class; all ``pipeline_s`` without
    overlap) and its sync of the segments before: what the simulator's ``AR[...]`` actions
    do. A segment whose holders sit on several nodes crosses their NICs, and starts once
    the syncs through them before it are done: the stages of a node share its NIC, which
    the replay splits among the syncs running at once and this runs one after the other --
    the same end, as the NIC does the same work (the replay within 1e-4 on two TP-4 stages
    per node; priced each alone, the exposed sync was half the replay's). A class's
    replicas hold each segment on the same stage, so they stay ready at the same time:
    tracked once per class (the NICs per node)."""
    ready = dict(ends)
    nic_free: dict[int, float] = {}  # node -> when the syncs through its NIC so far end
    replicas = classes.replicas
    for seg in segments:
        if len(seg.holders) > 1:
            held = {(classes.class_of[ri], si) for ri, si in seg.holders}
            nodes = {replicas[ri].stages[si].node for ri, si in seg.holders}
            if len(nodes) == 1:
                nodes.clear()  # one node: its rings stay inside it, off the NIC
            start = max(ready[h] for h in held)
            for n in nodes:  # its rings cross these NICs: it starts after the syncs there
                start = max(start, nic_free.get(n, start))
            done = start + segment_sync_s(cm, replicas, seg, zero1)
            for h in held:
                ready[h] = done
            for n in nodes:
                nic_free[n] = done
    return max(0.0, max(ready.values(), default=0.0) - pipeline_s)


def stage_ends(cm: CostModel, replica: Replica, span_s: float, schedule: str = "1f1b",
               virtual_stages: int = 1) -> list[float]:
    """When each stage's gradients are final, in a pipeline of ``span_s``: at its last
    backward; stage 0 last, stage i earlier by the backwards and gradient transfers of the
    stages before it (the last micro-batch's gradient walks back through them). Interleaved
    1F1B: the last backward is chunk 0's, 1/v of the stage's. ZB-H1: at the stage's last W,
    after its last `k_i = min(i + 1, m)` W's, the last B's input gradient walking back as
    before; the latest of them ends the span."""
    n, m = replica.num_stages, replica.num_micro_batches
    times = [cm.times_of(replica, i, schedule) for i in range(n)]
    links = [cm.boundary_time_s(replica, i) for i in range(n - 1)]
    zb = schedule == "zb-h1"
    v = virtual_stages if schedule == "interleaved-1f1b" else 1
    ends, back = [], 0.0  # relative to stage 0's last backward (B under zb-h1)
    for i, t in enumerate(times):
        ends.append(-back + (min(i + 1, m) * t.wgrad_s if zb else 0.0))
        if i + 1 < n:
            back += (t.igrad_s if zb else t.bwd_s / v) + links[i]
    last = max(ends)
    return [span_s - last + e for e in ends]


def dp_sync_time_s(cm: CostModel, classes: ReplicaClasses, zero1: bool,
                   virtual_stages: int, schedule: str, overlap: bool) -> float:
    """With overlap, a stage's segments start as soon as every stage holding them has
    finished its last backward (`stage_ends`: under ZB-H1 its last W); else after every
    pipeline. Pipelines and stage ends are computed once per class of identical replicas."""
    spans = [cm.pipeline_time_s(r, schedule, virtual_stages)[0]
             for r in classes.representatives]
    pipeline_s = max(spans, default=0.0)
    ends = {
        (c, si): (e if overlap else pipeline_s)
        for c, r in enumerate(classes.representatives)
        for si, e in enumerate(stage_ends(cm, r, spans[c], schedule, virtual_stages))
    }
    segments = segments_of(classes.replicas, cm.model, virtual_stages)  # 1 unless interleaved
    return exposed_sync_s(cm, classes, segments, ends, pipeline_s, zero1)
