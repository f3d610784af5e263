"""Exact bounds that let the fast planner skip work that cannot matter.

- **Replicas** (`most_replicas`): a memory context whose shapes were fitted with optimizer
  state sharded over ``shards`` replicas (ZeRO-1) only takes candidates with at least that
  many replicas; a context asking for more replicas than any candidate can have is empty
  and is not searched.
- **Exact scores** (`scoring.Scorer.bound_s`): a candidate whose shapes' busiest
  pipelines, each plus a floor on its first stage's gradient sync, plus the optimizer step
  already lose to the best plan is not placed or evaluated.
- **Estimates** (`search.FastSearch._ranked`): a candidate whose pipeline bound, or whose
  pipeline plus a floor on its estimated sync (`estimate.Estimator.sync_floor_s`), is below
  the shortlist's last estimate gets no estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import tp_degrees


def most_replicas(builder: ShapeBuilder, groups: Sequence[int], shards: int) -> int:
    """An upper bound on the replicas of any candidate over ``groups`` whose stages fit
    memory with optimizer state over ``shards``: each replica trains at least one sequence,
    and holds the L layers on stages of at most `layer_cap` layers each -- at most rho
    layers per chip, rho the best cap / TP of any stage (`LayerCaps.most`: one micro-batch
    of one sequence in flight, no embedding or head, with or without recompute) -- so it
    needs at least L / rho chips."""
    cluster, model, job = builder.cluster, builder.model, builder.job
    rho = Fraction(0)
    for g in groups:
        for tp in tp_degrees(cluster.groups[g], model, job):
            cap = builder.caps.most(g, tp, 1, shards, job.allow_recompute)
            rho = max(rho, Fraction(cap, tp))
    if rho == 0:
        return 0
    chips = math.ceil(Fraction(model.num_layers) / rho)
    return min(job.global_batch, sum(cluster.groups[g].num_devices for g in groups) // chips)
