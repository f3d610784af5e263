"""A cheap estimate of a candidate's tokens/s, used only to rank candidates before the exact
score (`scoring.Scorer`). It reuses the cost model's components: the shapes' pipeline
times, `CostModel.optimizer_time_s` on one representative replica per shape (exact: it is a
maximum over replicas) and the cost model's hierarchical all-reduce for gradient sync
computed per shape instead of per replica (assumes every island spans several nodes).
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Sequence

from polychip.costmodel.comm import hierarchical_allreduce_time_s
from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.planner.shapes import Shape

Classes = Sequence[tuple[Shape, int]]


class Estimator:
    def __init__(self, scorer):
        self.scorer = scorer
        self.builder, self.cm, self.job = scorer.builder, scorer.cm, scorer.job
        self.cluster, self.model = self.cm.cluster, self.cm.model
        self._opt: dict[tuple[int, int], float] = {}
        self._allreduce: dict[tuple, float] = {}
        self.layer_params = self.model.layer_params

    def pipeline_s(self, classes: Classes) -> float | None:
        """Closed-form batch split: sum over replicas of mb * ((T - fill) / beat + 1) = G."""
        classes = [(s, n) for s, n in classes if n > 0]
        if not classes:
            return None
        g = self.job.global_batch
        if sum(s.micro_batch_size * n for s, n in classes) > g:
            return None
        if all(s.max_micro_batches is not None for s, _ in classes) and (
            sum(s.micro_batch_size * n * (s.max_micro_batches or 0) for s, n in classes) < g
        ):
            return None  # memory caps the micro-batches below the global batch
        rate = sum(n * s.rate for s, n in classes)
        lag = sum(n * s.rate * (s.fill_s - s.beat_s) for s, n in classes)
        t = (self.job.global_batch + lag) / rate
        return max(t, max(s.fill_s for s, _ in classes))

    def optimizer_s(self, shape: Shape, shards: int) -> float:
        key = (id(shape), shards)
        if key not in self._opt:
            rep = self.builder.representative(shape)
            self._opt[key] = self.cm.optimizer_time_s((rep,), shards)
        return self._opt[key]

    def dp_sync_s(self, classes: Classes) -> float:
        replicas = sum(n for _, n in classes)
        if replicas <= 1:
            return 0.0
        net = self.cluster.network
        groups = self.cluster.groups

        def allreduce(holders: list[tuple[int, int, int]], params: int) -> float:
            """holders: (group, tp, count)."""
            key = (tuple(holders), params, tuple(sorted(used.items())))
            hit = self._allreduce.get(key)
            if hit is None:
                hit = self._allreduce[key] = _allreduce(holders, params)
            return hit

        used: dict[int, int] = {}
        for s, n in classes:
            for g, d in s.devices.items():
                used[g] = used.get(g, 0) + d * n

        def one_node(g: int) -> bool:  # placement packs a group's chips into one node
            return groups[g].num_nodes == 1 or used[g] <= groups[g].chips_per_node

        def _allreduce(holders: list[tuple[int, int, int]], params: int) -> float:
            islands: dict[str, list] = {}
            nic = []
            for g, _, n in holders:
                chip = groups[g].chip
                # a chip's NIC share on the group's fullest node under canonical packing
                bw = groups[g].nic_bw_bytes_per_s / min(groups[g].chips_per_node, used[g])
                nic.append(bw)
                isl = islands.setdefault(chip.island, [0, bw, set()])
                isl[0] += n
                isl[1] = min(isl[1], bw)
                isl[2].add(g)
            rings = []
            for p, bw, gs in islands.values():
                if len(gs) == 1 and one_node(next(iter(gs))):
                    chip = groups[next(iter(gs))].chip
                    rings.append((p, chip.link_bw_bytes_per_s, INTRA_NODE_LATENCY_S))
                else:
                    rings.append((p, bw, net.latency_s))
            n_bytes = max(2.0 * params / tp for _, tp, _ in holders)
            bridge = min(nic)
            return hierarchical_allreduce_time_s(
                n_bytes,
                rings,
                bridge,
                net.host_copy_bw_bytes_per_s,
                net.latency_s,
            )

        stage_groups = []
        for s, n in classes:
            per_stage = [(seg.group, seg.tp) for seg in s.template for _ in range(seg.num_stages)]
            starts = list(itertools.accumulate(s.layers, initial=0))
            stage_groups.append((n, per_stage, starts))
        bounds = sorted({b for _, _, st in stage_groups for b in st})
        prefix = [0.0]
        for a, b in itertools.pairwise(bounds):
            holders = []
            for n, per_stage, starts in stage_groups:
                holders.append((*per_stage[bisect_right(starts, a) - 1], n))
            prefix.append(prefix[-1] + allreduce(holders, (b - a) * self.layer_params))
        index = {b: i for i, b in enumerate(bounds)}
        embed = allreduce([(*ps[0], n) for n, ps, _ in stage_groups], self.model.embedding_params)
        head = allreduce([(*ps[-1], n) for n, ps, _ in stage_groups], self.model.head_params)
        worst = 0.0
        for _n, per_stage, starts in stage_groups:
            last = len(per_stage) - 1
            for i in range(len(per_stage)):
                t = prefix[index[starts[i + 1]]] - prefix[index[starts[i]]]
                t += (embed if i == 0 else 0.0) + (head if i == last else 0.0)
                worst = max(worst, t)
        return worst

    def tokens_per_s(self, classes: Classes) -> float:
        pipe = self.pipeline_s(classes)
        if pipe is None:
            return 0.0
        replicas = sum(n for _, n in classes)
        shards = replicas if self.scorer.zero1_for(replicas) else 1
        if any(s.zero_shards > shards for s, _ in classes):
            return 0.0  # memory was checked assuming more replicas than this candidate has
        opt = max(self.optimizer_s(s, shards) for s, _ in classes)
        step = pipe + self.dp_sync_s(classes) + opt
        return self.job.tokens_per_step / step
