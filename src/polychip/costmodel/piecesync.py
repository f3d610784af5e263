"""A segment's gradient sync priced from one piece, cached by how its holders sit.

`gradsync.segment_hops` lists every hop of every piece of a segment -- O(ranks) per segment
and plan, which a planner pricing thousands of plans of thousands of chips cannot afford.
The same floats come from far less:

- **one piece for all**: every piece has one rank of each holder stage, so all pieces sit
  on the same nodes in the same order and their hops match one for one. Of one piece's
  hops, a NIC side carries ``num`` (pieces) times as many; a rank's own link ``num / tp``
  times (a stage of degree tp shares each rank among that many pieces);
- **holders for ranks**: both ascend in holder order, so a description keyed by holders
  serves every plan with the same islands;
- **figures, then bytes**: a hop's latency, the parts of the buffer it sends and copies
  and its rate do not depend on the segment's size. They are kept, the distinct ones per
  step, under a key of the holders' placement (their nodes' order and groups, chips, TP
  degrees); the segment's bytes enter only at the end. Every segment and candidate plan
  whose holders sit alike is priced from the same few figures (with a profile's measured
  collectives, whose rate depends on the size, the key includes the size).

tests/costmodel/test_gradsync_pieces.py checks the floats against `segment_hops`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polychip.costmodel.hops import link_figures, measured_ring_bw
from polychip.plan.collectives import BRIDGE, Kind, describe
from polychip.plan.plan import Stage

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel

Figure = tuple[float, float, float, float]  # latency s, 2 x part copied, part sent, rate


@dataclass(frozen=True)
class KindFigures:
    """One collective of a segment: its pieces and, per step, whether it bridges and its
    hops' distinct figures."""

    bytes_per_param: float
    num: int
    steps: tuple[tuple[bool, tuple[Figure, ...]], ...]

    def time_s(self, num_params: int, host_bw: float) -> float:
        """Steps one after the other, each as long as its slowest hop."""
        n_bytes = self.bytes_per_param * num_params / self.num
        total = 0
        for bridge, figures in self.steps:
            total += max((lat + (two * n_bytes / host_bw if bridge else 0.0)
                          + sent * n_bytes / rate for lat, two, sent, rate in figures),
                         default=0.0)
        return total


def segment_sync_s(cm: CostModel, stages: Sequence[Stage], num_params: int, zero1: bool
                   ) -> float:
    """The sync of a segment of ``num_params`` held by ``stages``: an all-reduce in the
    job's reduce dtype, or (ZeRO-1) its reduce-scatter plus the all-gather of the
    parameters in the compute dtype."""
    nodes = [st.node for st in stages]
    used = sorted(set(nodes))
    order = {n: i for i, n in enumerate(used)}
    key = (zero1, num_params if cm.profile is not None else None,
           tuple(map(order.__getitem__, nodes)),  # each holder's node, by rank
           tuple(cm.nodes[n].group.index for n in used),  # those nodes' groups (and chips)
           tuple(len(st.local_devices) for st in stages))  # TP degrees
    figures = cm.sync_cache.get(key)
    if figures is None:
        job = cm.job
        kinds: tuple[tuple[Kind, float], ...] = (
            (("reduce-scatter", job.reduce_bytes), ("all-gather", job.compute_bytes)) if zero1
            else (("all-reduce", job.reduce_bytes),))
        figures = cm.sync_cache[key] = tuple(
            kind_figures(cm, stages, kind, bytes_per_param, num_params)
            for kind, bytes_per_param in kinds)
    host = cm.cluster.network.host_copy_bw_bytes_per_s
    return sum(f.time_s(num_params, host) for f in figures)


def kind_figures(cm: CostModel, stages: Sequence[Stage], kind: Kind, bytes_per_param: float,
                 num_params: int) -> KindFigures:
    """The figures of ``kind`` among one piece of ``stages`` (holders stand for ranks),
    each hop's rate from the loads of every piece: the hops of `gradsync.collective_hops`
    (rings in node order, `hops.link_figures`, shared as `hops.hop_sides` says), walked
    once per step."""
    num = math.lcm(*(len(st.local_devices) for st in stages))
    n_bytes = bytes_per_param * num_params / num  # for a profile's measured rings only
    node = [st.node for st in stages]
    shared = [num // len(st.local_devices) for st in stages]
    islands: dict[str, list[int]] = {}
    for h, st in enumerate(stages):
        islands.setdefault(cm.chip(st.chip).island, []).append(h)
    coll = describe(kind, tuple(tuple(i) for i in islands.values()))
    rank = [0] * len(stages)  # position in node order: a ring is its ranks sorted by it
    for i, h in enumerate(sorted(range(len(stages)), key=lambda h: (node[h], h))):
        rank[h] = i
    where = {h: (st.node, st.chip) for h, st in enumerate(stages)}
    links = _LinkMemo(cm)
    steps = []
    for step in coll.steps:
        # loads as `hops.hop_sides` counts them, of every piece: a rank's own link inside a
        # node (x pieces per rank), a node's NIC side between nodes (x pieces)
        out_load, in_load = [0] * len(stages), [0] * len(stages)
        tx: Counter = Counter()
        rx: Counter = Counter()
        edges = []
        for g, (sent, size, latencies) in zip(step.groups, step.figures, strict=True):
            measured = measured_ring_bw(cm, step, g.ranks, where, size * n_bytes)
            two = 2 * size if step.link == BRIDGE else 0.0
            ring = sorted(g.ranks, key=rank.__getitem__)
            for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
                if node[a] == node[b]:
                    out_load[a] += shared[a]
                    in_load[b] += shared[b]
                else:
                    tx[node[a]] += num
                    rx[node[b]] += num
                edges.append((a, b, latencies, two, sent, measured))
        distinct = set()
        for a, b, latencies, two, sent, measured in edges:
            na, nb = node[a], node[b]
            _, bw, lat, nic_a, nic_b = links.of(na, nb)
            if measured is not None:  # the node's collective as a profile measured it
                bw, lat = measured, 0.0
            rate = (min(bw, bw / out_load[a], bw / in_load[b]) if na == nb
                    else min(bw, nic_a / tx[na], nic_b / rx[nb]))
            distinct.add((latencies * lat, two, sent, rate))
        steps.append((step.link == BRIDGE, tuple(distinct)))
    return KindFigures(bytes_per_param, num, tuple(steps))


class _LinkMemo:
    """`hops.link_figures` per node pair, computed once per pair of groups (and whether
    the two are one node): what the figures depend on."""

    def __init__(self, cm: CostModel):
        self.cm, self.group = cm, [n.group.index for n in cm.nodes]
        self.pairs: dict[tuple[int, int], tuple] = {}
        self.groups: dict[tuple[int, int, bool], tuple] = {}

    def of(self, node_a: int, node_b: int) -> tuple:
        hit = self.pairs.get((node_a, node_b))
        if hit is None:
            key = (self.group[node_a], self.group[node_b], node_a == node_b)
            hit = self.groups.get(key)
            if hit is None:
                hit = self.groups[key] = link_figures(self.cm, node_a, node_b)
            self.pairs[(node_a, node_b)] = hit
        return hit
