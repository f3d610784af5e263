"""Counts -> devices: place every replica's segments on concrete nodes and chip slots.

Per node group, segments are placed largest first (stable): one larger than a node takes
fresh nodes, stage j of it at chip j * tp of the run (TP never straddles a node because tp
divides the node's chips); one that fits in a node goes, whole, into the first node with room
(first-fit decreasing), else a fresh node. This is the placement `shapes.py` times: stages of
a small segment share a node (intra-node links), a large segment crosses nodes every
chips_per_node / tp stages. Both planners use it, so a count that does not pack is simply
not a plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from polychip.plan.plan import Replica, Stage
from polychip.planner.shapes import Shape
from polychip.spec.cluster import Cluster, NodeGroup


def pack_group(group: NodeGroup, blocks: Sequence[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Place segments `(num_stages, tp)` on the group's nodes: per block (node offset within
    the group, first slot); None if they do not fit."""
    per_node = group.chips_per_node
    order = sorted(range(len(blocks)), key=lambda i: -blocks[i][0] * blocks[i][1])
    out: list[tuple[int, int]] = [(0, 0)] * len(blocks)
    fresh = 0
    used: dict[int, int] = {}  # partly filled node -> chips taken
    for i in order:
        size = blocks[i][0] * blocks[i][1]
        if size > per_node:
            full, tail = divmod(size, per_node)
            out[i] = (fresh, 0)
            if tail:
                used[fresh + full] = tail
            fresh += full + (1 if tail else 0)
        else:
            for node in sorted(used):
                if per_node - used[node] >= size:
                    out[i] = (node, used[node])
                    used[node] += size
                    break
            else:
                out[i] = (fresh, 0)
                used[fresh] = size
                fresh += 1
        if fresh > group.num_nodes:
            return None
        node = out[i][0]
        if used.get(node) == per_node:  # only the node just filled can have become full
            del used[node]
    return out


def fits(cluster: Cluster, classes: Sequence[tuple[Shape, int]]) -> bool:
    """Whether `count` replicas of each shape pack onto the cluster."""
    blocks: dict[int, list[tuple[int, int]]] = {}
    for shape, count in classes:
        for seg in shape.template:
            blocks.setdefault(seg.group, []).extend([(seg.num_stages, seg.tp)] * count)
    for g, items in blocks.items():
        group = cluster.groups[g]
        if sum(n * t for n, t in items) > group.num_devices or pack_group(group, items) is None:
            return False
    return True


def assign(
    cluster: Cluster, classes: Sequence[tuple[Shape, Sequence[int]]]
) -> tuple[Replica, ...] | None:
    """Concrete replicas: per class its shape and micro-batches per replica (replicas in
    class order). None if the segments do not pack."""
    blocks: dict[int, list[tuple[int, int]]] = {}
    owners: dict[int, list[tuple[int, int]]] = {}  # group -> (replica, segment index)
    flat: list[tuple[Shape, int]] = []
    for shape, micro in classes:
        for m in micro:
            r = len(flat)
            flat.append((shape, m))
            for si, seg in enumerate(shape.template):
                blocks.setdefault(seg.group, []).append((seg.num_stages, seg.tp))
                owners.setdefault(seg.group, []).append((r, si))
    where: dict[tuple[int, int], tuple[int, int, int]] = {}  # (replica, segment) -> node, slot
    for g, items in blocks.items():
        group = cluster.groups[g]
        placed = pack_group(group, items)
        if placed is None:
            return None
        base = cluster.first_node(group)
        for (r, si), (node, slot) in zip(owners[g], placed, strict=True):
            where[(r, si)] = (base + node, slot, group.chips_per_node)
    replicas = []
    for r, (shape, m) in enumerate(flat):
        stages = []
        start = 0
        i = 0
        for si, seg in enumerate(shape.template):
            node0, slot0, per_node = where[(r, si)]
            chip = cluster.groups[seg.group].chip.name
            for j in range(seg.num_stages):
                offset = slot0 + j * seg.tp
                node, slot = node0 + offset // per_node, offset % per_node
                stages.append(
                    Stage(
                        start,
                        start + shape.layers[i],
                        node,
                        tuple(range(slot, slot + seg.tp)),
                        chip,
                        shape.recompute[i],
                    )
                )
                start += shape.layers[i]
                i += 1
        mb = shape.micro_batch_size
        replicas.append(Replica(tuple(stages), m * mb, mb))
    return tuple(replicas)
