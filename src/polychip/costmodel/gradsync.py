"""Data-parallel gradient sync in the closed form: every layer's gradient all-reduced among
the stages that hold it, hierarchically by island (docs/cost-model.md, "Data-parallel
gradient sync"). Not overlapped with the backward: the simulator models the overlap."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from polychip.costmodel.comm import hierarchical_allreduce_time_s
from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.plan.plan import Replica, Stage

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel


def segment_allreduce_s(cm: CostModel, holders: list[tuple[Stage, int]], n_params: int) -> float:
    """All-reduce the gradient of `n_params` parameters among stages `holders`
    ((stage, tp) of each replica holding them), hierarchically by island."""
    if len(holders) <= 1:
        return 0.0
    by_island: dict[str, list[Stage]] = {}
    for st, _ in holders:
        by_island.setdefault(cm.chip(st.chip).island, []).append(st)
    n_bytes = max(2.0 * n_params / tp for _, tp in holders)
    net = cm.cluster.network
    islands = []
    for members in by_island.values():
        nodes = {s.node for s in members}
        if len(nodes) == 1:
            chip = cm.chip(members[0].chip)
            islands.append((len(members), chip.link_bw_bytes_per_s, INTRA_NODE_LATENCY_S))
        else:
            bw = min(cm.device_nic_bw(n) for n in nodes)
            islands.append((len(members), bw, net.latency_s))
    bridge = min(cm.device_nic_bw(st.node) for st, _ in holders)
    return hierarchical_allreduce_time_s(
        n_bytes, islands, bridge, net.host_copy_bw_bytes_per_s, net.latency_s
    )


def dp_sync_time_s(cm: CostModel, replicas: tuple[Replica, ...]) -> float:
    """Slowest device's gradient sync: the layers of its stage are cut into segments whose
    holder set is constant, each segment all-reduced among its holders."""
    if len(replicas) <= 1:
        return 0.0
    model = cm.model
    bounds = sorted({b for r in replicas for s in r.stages for b in (s.layer_start, s.layer_end)})
    seg_time: dict[tuple[int, int], float] = {}
    for a, b in itertools.pairwise(bounds):
        holders = []
        for r in replicas:
            st = next(s for s in r.stages if s.layer_start <= a < s.layer_end)
            holders.append((st, st.tp))
        seg_time[(a, b)] = segment_allreduce_s(cm, holders, (b - a) * model.layer_params)
    firsts = [(r.stages[0], r.stages[0].tp) for r in replicas]
    lasts = [(r.stages[-1], r.stages[-1].tp) for r in replicas]
    embed_s = segment_allreduce_s(cm, firsts, model.embedding_params)
    # A tied output head on its own stage is a copy of the embedding: its gradient too.
    tied = model.tie_embeddings and any(r.num_stages > 1 for r in replicas)
    head_n = model.head_params + (model.embedding_params if tied else 0)
    head_s = segment_allreduce_s(cm, lasts, head_n)
    worst = 0.0
    for r in replicas:
        for si, st in enumerate(r.stages):
            t = sum(v for (a, _), v in seg_time.items() if st.layer_start <= a < st.layer_end)
            t += embed_s if si == 0 else 0.0
            t += head_s if si == r.num_stages - 1 else 0.0
            worst = max(worst, t)
    return worst
