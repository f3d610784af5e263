"""The hops of one ring: the edges a ring over ranks (in node order) crosses, their links
and what each shares (docs/cost-model.md, "Data-parallel gradient sync"). The one home of
how a ring meets the cluster's links (`link_figures`, `hop_sides`): `gradsync` turns a
ring's edges into the hops the simulator replays, `piecesync` prices them for the cost
model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from polychip.costmodel.comm import LinkKind
from polychip.plan.collectives import Step

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel

Where = Mapping[int, tuple[int, str]]  # rank -> (node, chip)
Sides = tuple[tuple[tuple, float], ...]  # (what a hop crosses, that one's bandwidth)


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
    sides: Sides

    def transfer_s(self, rate: float) -> float:
        return self.n_bytes / rate

    def time_s(self, rate: float) -> float:
        return self.latency_s + self.copy_s + self.transfer_s(rate)


def ring_edges(cm: CostModel, ranks: Sequence[int], where: Where, links: dict,
               measured: float | None
               ) -> Iterator[tuple[int, int, int, int, LinkKind, float, float, Sides]]:
    """The ring over ``ranks`` in node order: per edge (src, dst, src node, dst node, link
    kind, bandwidth, latency, sides). ``measured``: the ring's bandwidth as a profile
    measured it (no latency), if any. ``links``: a memo of `link_figures` per node pair,
    shared by the caller's rings."""
    ring = sorted(ranks, key=lambda r: (where[r][0], r))
    for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
        na, nb = where[a][0], where[b][0]
        link = links.get((na, nb))
        if link is None:
            link = links[(na, nb)] = link_figures(cm, na, nb)
        kind, bw, lat, nic_a, nic_b = link
        if measured is not None:  # the node's collective as a profile measured it
            bw, lat = measured, 0.0
        yield a, b, na, nb, kind, bw, lat, hop_sides(a, b, na, nb, bw, nic_a, nic_b)


def link_figures(cm: CostModel, node_a: int, node_b: int
                 ) -> tuple[LinkKind, float, float, float, float]:
    """(kind, bandwidth, latency) of the link from node_a to node_b and both nodes' NICs:
    functions of the nodes' groups and whether they are one node (`CostModel.link`)."""
    return (*cm.link(node_a, node_b), cm.nic_bw(node_a), cm.nic_bw(node_b))


def hop_sides(a: int, b: int, node_a: int, node_b: int, bw: float, nic_a: float,
              nic_b: float) -> Sides:
    """What a hop from rank a to rank b shares with the step's other hops: inside a node,
    the chips' own links (a's out side, b's in side); between nodes, the NICs (node_a's
    transmit side, node_b's receive side)."""
    if node_a == node_b:
        return ((("out", a), bw), (("in", b), bw))
    return ((("tx", node_a), nic_a), (("rx", node_b), nic_b))


def measured_ring_bw(cm: CostModel, step: Step, ranks: Sequence[int], where: Where,
                     n_bytes: float) -> float | None:
    """A ring inside one node of one chip type whose collective (`step.op` over these ranks,
    on a tensor of `n_bytes`) a profile measured: each hop's bandwidth that makes the ring
    last the measured time (its latency included), else None (the link's figures)."""
    if cm.profile is None or len(ranks) < 2:
        return None
    places = {where[r] for r in ranks}
    if len(places) != 1:
        return None
    (_, chip), = places
    seconds = cm.profile.collective_s(chip, step.op, len(ranks), n_bytes)
    if seconds is None or seconds <= 0:
        return None
    factor = 2 if step.op == "all_reduce" else 1
    return factor * (len(ranks) - 1) / len(ranks) * n_bytes / seconds
