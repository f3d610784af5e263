"""A cheap estimate of a candidate's tokens/s, used only to rank candidates before the exact
score (`scoring.Scorer`). It reuses the cost model's components: the shapes' pipeline
times, `CostModel.optimizer_time_s` on one representative replica per shape (exact: it is a
maximum over replicas) and the cost model's hierarchical all-reduce for gradient sync
computed per shape instead of per replica (assumes every island spans several nodes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from polychip.costmodel.comm import hierarchical_allreduce_time_s
from polychip.planner.shapes import Shape

Classes = Sequence[tuple[Shape, int]]


class Estimator:
    def __init__(self, scorer):
        self.scorer = scorer
        self.builder, self.cm, self.job = scorer.builder, scorer.cm, scorer.job
        self.cluster, self.model = self.cm.cluster, self.cm.model
        self._opt: dict[tuple[int, int], float] = {}
        self._allreduce: dict[tuple, float] = {}

    def pipeline_s(self, classes: Classes) -> float | None:
        """Closed-form batch split: sum over replicas of mb * ((T - fill) / beat + 1) = G."""
        classes = [(s, n) for s, n in classes if n > 0]
        if not classes:
            return None
        if sum(s.micro_batch_size * n for s, n in classes) > self.job.global_batch:
            return None
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
            key = (tuple(holders), params)
            hit = self._allreduce.get(key)
            if hit is None:
                hit = self._allreduce[key] = _allreduce(holders, params)
            return hit

        def _allreduce(holders: list[tuple[int, int, int]], params: int) -> float:
            islands: dict[str, list] = {}
            for g, _, n in holders:
                chip = groups[g].chip
                bw = groups[g].nic_bw_bytes_per_s / groups[g].chips_per_node
                isl = islands.setdefault(chip.island, [0, bw])
                isl[0] += n
                isl[1] = min(isl[1], bw)
            n_bytes = max(2.0 * params / tp for _, tp, _ in holders)
            bridge = min(v[1] for v in islands.values())
            return hierarchical_allreduce_time_s(
                n_bytes,
                [(p, bw, net.latency_s) for p, bw in islands.values()],
                bridge,
                net.host_copy_bw_bytes_per_s,
                net.latency_s,
            )

        stage_groups = []
        for s, n in classes:
            per_stage = [(seg.group, seg.tp) for seg in s.template for _ in range(seg.num_stages)]
            starts = list(itertools.accumulate(s.layers, initial=0))
            stage_groups.append((s, n, per_stage, starts))
        bounds = sorted({b for _, _, _, st in stage_groups for b in st})
        seg_time = {}
        for a, b in itertools.pairwise(bounds):
            holders = []
            for _s, n, per_stage, starts in stage_groups:
                i = next(i for i in range(len(per_stage)) if starts[i] <= a < starts[i + 1])
                holders.append((*per_stage[i], n))
            seg_time[a] = allreduce(holders, (b - a) * self.model.layer_params)
        embed = allreduce(
            [(*ps[0], n) for _, n, ps, _ in stage_groups], self.model.embedding_params
        )
        head = allreduce([(*ps[-1], n) for _, n, ps, _ in stage_groups], self.model.head_params)
        worst = 0.0
        for _s, _n, per_stage, starts in stage_groups:
            for i in range(len(per_stage)):
                t = sum(v for a, v in seg_time.items() if starts[i] <= a < starts[i + 1])
                t += embed if i == 0 else 0.0
                t += head if i == len(per_stage) - 1 else 0.0
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
