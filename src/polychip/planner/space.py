"""The search space both planners share: pipeline templates, micro-batch sizes, contexts.

Chips of one node group are interchangeable, so a pipeline is described by COUNTS, never by
devices: a *template* is an ordered tuple of segments `(node group, number of stages, TP
degree)`, each group at most once, consecutive stages of a segment on consecutive chips of
that group (TP inside one node). Turning templates and counts into devices is `assign.py`.

The space (docs/planner.md):
- templates: every ordered choice of distinct node groups, every stage count per segment
  (total <= max_stages <= layers), every TP degree dividing the node's chips, the heads and
  the KV heads; a segment never needs more chips than its group has;
- micro-batch sizes: powers of two up to MAX_MICRO_BATCH (and the global batch);
- per stage, full activation recompute exactly when the stage does not fit without it (and
  recompute is allowed) -- it only adds time, so anything else is dominated;
- ZeRO-1 when allowed (it only lowers memory and optimizer time in the cost model).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from polychip.plan.capabilities import tp_problems
from polychip.spec.cluster import Cluster, NodeGroup
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

MAX_MICRO_BATCH = 8
DEFAULT_MAX_STAGES = 16


@dataclass(frozen=True, order=True)
class Segment:
    group: int  # index into Cluster.groups
    num_stages: int
    tp: int

    @property
    def num_devices(self) -> int:
        return self.num_stages * self.tp


Template = tuple[Segment, ...]


def template_stages(template: Template) -> list[tuple[int, int]]:
    """(group, tp) of every stage, in pipeline order."""
    return [(seg.group, seg.tp) for seg in template for _ in range(seg.num_stages)]


def template_devices(template: Template) -> dict[int, int]:
    return {seg.group: seg.num_devices for seg in template}


def tp_degrees(group: NodeGroup, model: ModelSpec, job: TrainingJob) -> list[int]:
    """TP degrees a stage on this group may use: inside one node, and only degrees the
    runtime can execute for this model and job (`capabilities.tp_problems`)."""
    return [
        t
        for t in range(1, group.chips_per_node + 1)
        if group.chips_per_node % t == 0 and not tp_problems(model, job, t)
    ]


def micro_batch_sizes(global_batch: int) -> list[int]:
    out, mb = [], 1
    while mb <= min(MAX_MICRO_BATCH, global_batch):
        out.append(mb)
        mb *= 2
    return out


def max_stages_for(model: ModelSpec, max_stages: int | None) -> int:
    return min(model.num_layers, max_stages or DEFAULT_MAX_STAGES)


def segments_of(
    group: NodeGroup, model: ModelSpec, job: TrainingJob, max_stages: int
) -> list[Segment]:
    """Every (stages, TP) a segment on this group can have on its own."""
    out = []
    for t in tp_degrees(group, model, job):
        for n in range(1, max_stages + 1):
            if n * t <= group.num_devices:
                out.append(Segment(group.index, n, t))
    return out


def all_templates(
    cluster: Cluster,
    model: ModelSpec,
    job: TrainingJob,
    max_stages: int,
    groups: Sequence[int] | None = None,
) -> Iterator[Template]:
    """Every template over `groups` (default: all): the exhaustive planner's universe."""
    chosen = [
        cluster.groups[i] for i in (groups if groups is not None else range(len(cluster.groups)))
    ]
    options = {g.index: segments_of(g, model, job, max_stages) for g in chosen}
    for k in range(1, len(chosen) + 1):
        for order in itertools.permutations(chosen, k):
            for segs in itertools.product(*(options[g.index] for g in order)):
                if sum(s.num_stages for s in segs) <= max_stages:
                    yield tuple(segs)


def zero_shard_buckets(max_replicas: int, allow_zero1: bool, factor: int = 8) -> list[int]:
    """Replica counts at which memory is checked (ZeRO-1 shards optimizer state over the
    replicas): 1, factor, factor^2, ... up to max_replicas."""
    out = [1]
    while allow_zero1 and out[-1] * factor < max_replicas:
        out.append(out[-1] * factor)
    if allow_zero1 and max_replicas > 1 and out[-1] != max_replicas:
        out.append(max_replicas)
    return out


def canonical_slots(builder_or_cluster, template: Template) -> list[tuple[int, int]]:
    """(node offset within its group, first slot) of each stage in canonical placement."""
    cluster = getattr(builder_or_cluster, "cluster", builder_or_cluster)
    out = []
    for seg in template:
        per_node = cluster.groups[seg.group].chips_per_node
        for j in range(seg.num_stages):
            if seg.num_devices <= per_node:
                out.append((0, j * seg.tp))
            else:
                out.append(((j * seg.tp) // per_node, (j * seg.tp) % per_node))
    return out
