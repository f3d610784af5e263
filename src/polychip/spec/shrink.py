"""A cluster less some of its chips: what is left after chips or nodes die (elastic
re-planning, :mod:`polychip.elastic`).

Nodes keep their order. A node group whose nodes no longer all hold the same number of chips
is split into runs of consecutive nodes that do (each keeps the group's chip, NIC and label);
a node left with no chip disappears. Measured links between groups carry over to every part
of a split group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from polychip.spec.cluster import Cluster, cluster_from_dict, cluster_to_dict
from polychip.spec.errors import SpecError


def _runs(counts: list[int]) -> list[tuple[int, int]]:
    """(number of nodes, chips per node) of each run of equal counts, zeros dropped."""
    runs: list[list[int]] = []
    for c in counts:
        if runs and runs[-1][1] == c:
            runs[-1][0] += 1
        else:
            runs.append([1, c])
    return [(n, c) for n, c in runs if c > 0]


def without_chips(cluster: Cluster, lost: Mapping[int, int]) -> tuple[Cluster, dict[int, int]]:
    """``cluster`` with ``lost[node]`` fewer chips on each node (global node index), and where
    each surviving node went (old index -> new index)."""
    for node, n in lost.items():
        if not 0 <= node < len(cluster.nodes):
            raise SpecError(f"node {node} is not in cluster {cluster.name!r}")
        per_node = cluster.group_of_node(node).chips_per_node
        if not 0 <= n <= per_node:
            raise SpecError(f"node {node} has {per_node} chips; cannot lose {n}")
    data = cluster_to_dict(cluster)
    groups: list[dict[str, Any]] = []
    parts: dict[int, list[int]] = {}
    node_map: dict[int, int] = {}
    old = new = 0
    for gi, g in enumerate(data["nodes"]):
        counts = [g["chips_per_node"] - lost.get(old + i, 0) for i in range(g["count"])]
        for i, c in enumerate(counts):
            if c > 0:
                node_map[old + i] = new
                new += 1
        old += g["count"]
        parts[gi] = []
        for num, chips in _runs(counts):
            parts[gi].append(len(groups))
            groups.append({**g, "count": num, "chips_per_node": chips})
    if not groups:
        raise SpecError(f"cluster {cluster.name!r} has no chip left")
    data["nodes"] = groups
    data["links"] = _split_links(data["links"], parts, [g["count"] for g in groups])
    return cluster_from_dict(data), node_map


def _split_links(links: list[dict[str, Any]], parts: dict[int, list[int]],
                 counts: list[int]) -> list[dict[str, Any]]:
    """Each link between two old groups, between every part of the one and of the other
    (within one part only when it still has two nodes)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for link in links:
        a, b = link["between"]
        for pa in parts.get(a, []):
            for pb in parts.get(b, []):
                pair = (min(pa, pb), max(pa, pb))
                if pair not in seen and (pa != pb or counts[pa] > 1):
                    seen.add(pair)
                    out.append({**link, "between": list(pair)})
    return out
