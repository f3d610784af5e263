"""A gradient all-reduce as phases of point-to-point hops the fabric can carry.

Hierarchical across islands (DESIGN.md): (1) a ring reduce-scatter inside each island,
(2) a ring all-reduce of the shards across islands, through the bridge (host copy out,
network, host copy in), (3) a ring all-gather inside each island. Islands run each phase
side by side; a phase ends when its last hop does.

A member is one stage (a TP group): the gradient it exchanges is that of all its TP shards
(`n_bytes`), carried by its `tp` chips' links in parallel inside a node and by the node's
NIC between nodes. A ring visits the members in node order, so it crosses each node's NIC
once. With uncontended links every phase takes exactly the time of the cost model's
`hierarchical_allreduce_time_s` terms for the same bandwidths.
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.costmodel import CostModel, LinkKind
from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.simulator.network import Leg


@dataclass(frozen=True)
class Member:
    node: int
    tp: int
    chip: str


@dataclass(frozen=True)
class Hop:
    src_node: int
    dst_node: int
    kind: LinkKind
    n_bytes: float
    legs: tuple[Leg, ...]


def _ring(members: list[Member], n_bytes: float, steps: int, cm: CostModel) -> list[Hop]:
    """Every member sends `n_bytes` to the next, after `steps` latencies."""
    if len(members) < 2:
        return []
    spans_nodes = len({m.node for m in members}) > 1
    lat = cm.cluster.network.latency_s if spans_nodes else INTRA_NODE_LATENCY_S
    hops = []
    for a, b in zip(members, members[1:] + members[:1], strict=True):
        wait = Leg(delay_s=steps * lat)
        if a.node == b.node:
            bw = cm.chip(a.chip).link_bw_bytes_per_s * min(a.tp, b.tp)
            hops.append(
                Hop(a.node, b.node, LinkKind.INTRA_NODE, n_bytes, (wait, Leg(n_bytes / bw)))
            )
        else:
            flow = Leg(n_bytes=n_bytes, loads=(((a.node, 0), 1), ((b.node, 1), 1)))
            hops.append(Hop(a.node, b.node, LinkKind.INTER_NODE, n_bytes, (wait, flow)))
    return hops


def _bridge_ring(members: list[Member], n_bytes: float, cm: CostModel) -> list[Hop]:
    """All-reduce of one shard across islands: a ring of one member per island."""
    k = len(members)
    moved = 2 * (k - 1) / k * n_bytes
    host = cm.cluster.network.host_copy_bw_bytes_per_s  # per chip: TP shards copy in parallel
    wait = Leg(2 * (k - 1) * cm.cluster.network.latency_s)
    hops = []
    for a, b in zip(members, members[1:] + members[:1], strict=True):
        flow = Leg(n_bytes=moved, loads=(((a.node, 0), 1), ((b.node, 1), 1)))
        out, back = Leg(moved / (host * a.tp)), Leg(moved / (host * b.tp))
        hops.append(Hop(a.node, b.node, LinkKind.BRIDGE, moved, (wait, out, flow, back)))
    return hops


def allreduce_phases(
    members: list[Member], n_bytes: float, cm: CostModel
) -> list[tuple[str, list[Hop]]]:
    """[(phase name, hops)] of one all-reduce of `n_bytes` among `members`."""
    islands: dict[str, list[Member]] = {}
    for m in sorted(members, key=lambda m: m.node):
        islands.setdefault(cm.chip(m.chip).island, []).append(m)
    groups = [islands[k] for k in sorted(islands)]
    inner = [h for g in groups for h in _ring(g, (len(g) - 1) / len(g) * n_bytes, len(g) - 1, cm)]
    phases = [("reduce-scatter", inner)]
    if len(groups) > 1:
        p_min = min(len(g) for g in groups)
        shard = n_bytes / p_min
        cross = [h for j in range(p_min) for h in _bridge_ring([g[j] for g in groups], shard, cm)]
        phases.append(("cross-island", cross))
    phases.append(("all-gather", inner))
    return [(name, hops) for name, hops in phases if hops]
