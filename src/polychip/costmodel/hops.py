"""The hops of one ring: the edges a ring over ranks (in node order) crosses, their links
and what each shares (docs/cost-model.md, "Data-parallel gradient sync"). The one home of
how a ring meets the cluster's links: `gradsync.collective_hops` turns the edges into the
hops the simulator replays, `piecesync` prices them for the cost model.
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
    kind, bandwidth, latency, sides). Inside a node an edge uses the chip's link (its out
    and in sides); between nodes the NICs (the nodes' tx and rx sides). ``measured``: the
    ring's bandwidth as a profile measured it (no latency), if any. ``links``: a memo of
    link figures per node pair, shared by the caller's rings."""
    ring = sorted(ranks, key=lambda r: (where[r][0], r))
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
        yield a, b, na, nb, kind, bw, lat, sides


def measured_ring_bw(cm: CostModel, step: Step, ranks: Sequence[int], where: Where,
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
