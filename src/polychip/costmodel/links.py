"""What connects two nodes, and a chip's share of its node's NIC under a plan.

Between two nodes: the cluster's measured link for their node groups if it declares one
(`links:` in the cluster file), else the slower of the two NICs, with the network's latency;
nodes of different islands go through the bridge (docs/cost-model.md, "Links").

A node's NIC is shared by the chips that talk through it at once. Under a plan those are the
chips the plan uses on that node -- not every chip the node has: a plan using 2 of a node's
8 chips gives each of them half the NIC, not an eighth. `chips_in_use` counts them; a cost
model bound to replicas (`CostModel.under`) divides by that count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from polychip.costmodel.comm import LinkKind
from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.plan.plan import Replica
from polychip.spec.cluster import Cluster, Node


def chips_in_use(replicas: Iterable[Replica]) -> dict[int, int]:
    """Per node, the distinct chips the replicas' stages use on it."""
    used: dict[int, set[int]] = {}
    for replica in replicas:
        for st in replica.stages:
            used.setdefault(st.node, set()).update(st.local_devices)
    return {node: len(devices) for node, devices in used.items()}


def nic_share(nodes: Sequence[Node], node: int, used: Mapping[int, int] | None) -> float:
    """One chip's share of `node`'s NIC (bytes/s, each direction) when the chips in `used`
    talk at once: the NIC over the chips used on that node; over all its chips when `used`
    is None (no plan bound) or does not count that node."""
    group = nodes[node].group
    chips = (used or {}).get(node) or group.chips_per_node
    return group.nic_bw_bytes_per_s / chips


def measured_link_bw(
    cluster: Cluster, nodes: Sequence[Node], node_a: int, node_b: int
) -> float | None:
    """The declared (measured) bandwidth between two distinct nodes, None if none."""
    if node_a == node_b:
        return None
    link = cluster.link_between(nodes[node_a].group.index, nodes[node_b].group.index)
    return None if link is None else link.bw_bytes_per_s


def node_link(
    cluster: Cluster, nodes: Sequence[Node], node_a: int, node_b: int
) -> tuple[LinkKind, float, float]:
    """(kind, bandwidth bytes/s, latency s) between a stage on node_a and one on node_b."""
    ga, gb = nodes[node_a].group, nodes[node_b].group
    if node_a == node_b:
        return LinkKind.INTRA_NODE, ga.chip.link_bw_bytes_per_s, INTRA_NODE_LATENCY_S
    declared = cluster.link_between(ga.index, gb.index)
    bw = min(ga.nic_bw_bytes_per_s, gb.nic_bw_bytes_per_s)
    latency = cluster.network.latency_s
    if declared is not None:
        bw = declared.bw_bytes_per_s
        if declared.latency_s is not None:
            latency = declared.latency_s
    kind = LinkKind.BRIDGE if ga.chip.island != gb.chip.island else LinkKind.INTER_NODE
    return kind, bw, latency
