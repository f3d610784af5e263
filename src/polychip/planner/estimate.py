"""A cheap estimate of a candidate's tokens/s, used only to rank candidates before the exact
score (`scoring.Scorer`). It reuses the cost model's components: the shapes' pipeline
times, `CostModel.optimizer_time_s` on one representative replica per shape (exact: it is a
maximum over replicas) and, for gradient sync, the cost model's segments priced by the closed
form of the hierarchical all-reduce per shape instead of per replica.
"""

from __future__ import annotations

from collections.abc import Sequence

from polychip.costmodel.comm import hierarchical_allreduce_time_s, ring_allreduce_time_s
from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.plan.segments import cut_layers, head_params, tied_copy
from polychip.planner.scoring import first_stage_params, sync_bytes_per_param
from polychip.planner.shapes import Shape
from polychip.planner.space import canonical_slots

Classes = Sequence[tuple[Shape, int]]
ROUND_OFF = 1e-9  # relative slack for float round-off in bounds


class Estimator:
    def __init__(self, scorer):
        self.scorer = scorer
        self.builder, self.cm, self.job = scorer.builder, scorer.cm, scorer.job
        self.cluster, self.model = self.cm.cluster, self.cm.model
        self._allreduce: dict[tuple, float] = {}
        self._floors: dict[tuple, tuple[Shape, float]] = {}
        self._nodes: dict[tuple, tuple[tuple[int, int], ...]] = {}
        self.layer_params = self.model.layer_params

    def pipeline_s(self, classes: Classes) -> float | None:
        """Closed-form batch split: every replica's pipeline on a line, span(m) = fill +
        (m - 1) beat, and the shares summing to the batch, sum over replicas of mb ((T -
        fill) / beat + 1) = G. First with each shape's long-pipeline line, then with the
        line through its span at the micro-batches that gave it (a short pipeline is
        below the long one's line: 1F1B's windows, ZB-H1's ramp), so one class whose
        replicas split the batch evenly gets its exact span."""
        g = self.job.global_batch
        classes = [(s, n) for s, n in classes if n > 0]
        seqs = rate = lag = 0.0
        held: float | None = 0.0  # sequences the memory limits allow (None: unlimited)
        for s, n in classes:
            seqs += s.micro_batch_size * n
            r = n * s.rate
            rate += r
            lag += r * (s.fill_s - s.beat_s)
            if held is not None:
                held = (None if s.max_micro_batches is None
                        else held + s.micro_batch_size * n * s.max_micro_batches)
        if not classes or seqs > g or (held is not None and held < g):
            return None  # no replica, or one micro-batch each is already too many, or
            # memory caps the micro-batches below the global batch
        t = (g + lag) / rate
        lag, first = 0.0, 0.0
        for s, n in classes:
            m = max(1, round((t - s.fill_s) / s.beat_s + 1))
            lag += n * s.rate * (s.time_s(m) - m * s.beat_s)
            first = max(first, s.first_s)
        return max((g + lag) / rate, first)

    def optimizer_s(self, shape: Shape, shards: int) -> float:
        return self.scorer.optimizer_s(shape, shards)

    def dp_sync_s(self, classes: Classes, zero1: bool = False) -> float:
        """The gradient sync left after the pipeline, per shape class, as the cost model
        runs it (`gradsync.exposed_sync_s`): every segment of `plan.segments.cut_layers`
        in the one global order (head, layers from the last down, embedding) starts once
        every stage holding it is ready -- its gradients final (`ShapeBuilder.ready_s`,
        all at the pipeline's end without overlap) and its syncs before done -- and takes
        the closed form of the hierarchical all-reduce (`costmodel.comm`) in the job's
        reduce dtype; under ZeRO-1 half of it in the reduce dtype (the gradients'
        reduce-scatter), half in the compute dtype (the parameters' all-gather). Stages
        whose layers are cut differently wait on each other's syncs, which a per-device
        sum leaves out. Stages of a class that share a node in canonical placement take
        turns at its NIC, as the cost model's syncs do."""
        replicas = sum(n for _, n in classes)
        if replicas <= 1:
            return 0.0
        used: dict[int, int] = {}
        for s, n in classes:
            for g, d in s.devices.items():
                used[g] = used.get(g, 0) + d * n
        # what the sync sees of the chips used in a group: on how many of a node's chips
        # (the NIC's share) and whether they fit one node
        per_node = {g: (min(self.cluster.groups[g].chips_per_node, u),
                        u <= self.cluster.groups[g].chips_per_node) for g, u in used.items()}

        def allreduce(holders: list[tuple[int, int, int]], params: int) -> float:
            """holders: (group, tp, count)."""
            key = (tuple(holders), params, zero1, tuple(per_node[g] for g, _, _ in holders))
            hit = self._allreduce.get(key)
            if hit is None:
                hit = self._allreduce[key] = self._hierarchical_s(holders, params, per_node,
                                                                  zero1)
            return hit

        overlap = self.job.overlap_grad_sync
        ready = {(ci, si): -before for ci, (s, _) in enumerate(classes)
                 for si, before in enumerate(self.builder.ready_s(s) if overlap
                                             else (0.0,) * s.num_stages)}

        # a sync through a node's NIC waits for the syncs through it before
        # (`gradsync.exposed_sync_s`): the stages of a class that share a node in canonical
        # placement, where their group's chips do not all fit one node
        nics = {(ci, si): (ci, node) for ci, (s, _) in enumerate(classes)
                for si, node in enumerate(self._stage_nodes(s)) if not per_node[node[0]][1]}
        nic_free: dict[tuple, float] = {}

        def sync(stages: Sequence[int], seconds: float) -> None:
            held = list(enumerate(stages))  # (class, stage) holding the segment
            start = max(ready[h] for h in held)
            for h in held:
                if h in nics:
                    start = max(start, nic_free.get(nics[h], start))
            done = start + seconds
            for h in held:
                ready[h] = done
                if h in nics:
                    nic_free[nics[h]] = done

        per_stages = [(n, s.stage_groups) for s, n in classes]
        pipelined = any(len(ps) > 1 for _, ps in per_stages)
        last = [len(ps) - 1 for _, ps in per_stages]
        sync(last, allreduce([(*ps[-1], n) for n, ps in per_stages],
                             head_params(self.model, tied_copy(self.model, pipelined))))
        for a, b, stages in cut_layers([s.intervals for s, _ in classes]):
            holders = [(*ps[si], n) for (n, ps), si in zip(per_stages, stages, strict=True)]
            sync(stages, allreduce(holders, (b - a) * self.layer_params))
        sync([0] * len(classes), allreduce([(*ps[0], n) for n, ps in per_stages],
                                           self.model.embedding_params))
        return max(0.0, *ready.values())

    def _stage_nodes(self, shape: Shape) -> tuple[tuple[int, int], ...]:
        """Per stage of the shape, its node in canonical placement: (group, node offset)."""
        hit = self._nodes.get(shape.template)
        if hit is None:
            groups = [seg.group for seg in shape.template for _ in range(seg.num_stages)]
            hit = self._nodes[shape.template] = tuple(
                (g, off) for g, (off, _) in zip(groups, canonical_slots(self.cluster,
                                                                        shape.template),
                                                 strict=True))
        return hit

    def _hierarchical_s(self, holders: list[tuple[int, int, int]], params: int,
                        per_node: dict[int, tuple[int, bool]], zero1: bool) -> float:
        """Islands whose chips fit one node ring over the scale-up link (a chip's bytes, the
        gradient / TP, over its own link); others over the NICs, which each ring crosses
        once (the whole gradient through a NIC: its bandwidth / the smallest TP degree per
        chip's bytes); the bridge at every chip's share of its node's NIC among the chips
        the candidate uses there (each rank bridges its own shard)."""
        groups, net = self.cluster.groups, self.cluster.network
        islands: dict[str, list] = {}
        t_min = min(t for _, t, _ in holders)
        for g, _tp, n in holders:
            group = groups[g]
            isl = islands.setdefault(group.chip.island, [0, float("inf"), set()])
            isl[0] += n
            isl[1] = min(isl[1], group.nic_bw_bytes_per_s / t_min)
            isl[2].add(g)
        rings = []
        for p, bw, gs in islands.values():
            g = next(iter(gs))
            if len(gs) == 1 and (groups[g].num_nodes == 1 or per_node[g][1]):
                rings.append((p, groups[g].chip.link_bw_bytes_per_s, INTRA_NODE_LATENCY_S))
            else:
                rings.append((p, bw, net.latency_s))
        per_param = sync_bytes_per_param(self.job, zero1)
        n_bytes = max(per_param * params / tp for _, tp, _ in holders)
        # every rank bridges its own shard: a chip shares its node's NIC with the chips the
        # candidate uses there (canonical packing: the group's fullest node)
        bridge = min(groups[g].nic_bw_bytes_per_s / per_node[g][0] for g, _, _ in holders)
        return hierarchical_allreduce_time_s(
            n_bytes, rings, bridge, net.host_copy_bw_bytes_per_s, net.latency_s
        )

    def sync_floor_s(self, classes: Classes, zero1: bool = False) -> float:
        """A lower bound on `dp_sync_s` from each class's first stage and own replicas.

        The first stage of a class is ready `ready_s[0]` before the pipeline's end (0 but
        under ZB-H1, without overlap always 0) and then syncs its segments one after the
        other: its layers, the embedding, the head if it is the only stage. Each takes the
        hierarchical all-reduce among its holders, which include the class's own n, and
        that is at least the ring all-reduce among those n alone: the slowest island's
        ring is at least that of the class's island (p >= n members;
        `ring_allreduce_time_s` grows with p and the bytes and falls with the bandwidth),
        the bridge only adds; the bytes per rank are at least the stage's (the largest of
        the holders' params / TP). The ring's bandwidth is at most the faster of the two
        `_hierarchical_s` can give it: over the NICs, the group's NIC / the smallest TP
        with bytes of params / that TP -- the same as bytes of params / own TP over the
        NIC / own TP; over the chip's own link (only where the group's used chips fit one
        node) with the stage's own bytes. Its latency is at least the smaller of the two.
        Each case is affine in the bytes with a non-negative intercept, so their minimum is
        concave and subadditive: the sum over the segments is at least it at their summed
        parameters, the stage's. tests/planner/test_sync_floors.py checks it on random
        clusters."""
        if sum(n for _, n in classes) <= 1:
            return 0.0
        groups = self.cluster.groups
        used: dict[int, int] = {}
        for s, n in classes:
            for g, d in s.devices.items():
                used[g] = used.get(g, 0) + d * n
        pipelined = any(s.num_stages > 1 for s, _ in classes)
        floor = 0.0
        for s, n in classes:
            if n > 1:
                g0 = s.template[0].group
                link = groups[g0].num_nodes == 1 or used[g0] <= groups[g0].chips_per_node
                key = (id(s), n, zero1, pipelined, link)
                hit = self._floors.get(key)
                if hit is None:  # the shape is kept with its floor: its id stays its own
                    hit = self._floors[key] = (s, self._class_floor_s(s, n, zero1, pipelined,
                                                                      link))
                floor = max(floor, hit[1])
        return floor * (1 - ROUND_OFF)

    def _class_floor_s(self, shape: Shape, n: int, zero1: bool, pipelined: bool,
                       link: bool) -> float:
        """`sync_floor_s` of one class: its first stage's ring among its n replicas, less
        how long before the pipeline's end that stage is ready."""
        net = self.cluster.network
        g, tp = shape.stage_groups[0]
        group = self.cluster.groups[g]
        n_bytes = (sync_bytes_per_param(self.job, zero1)
                   * first_stage_params(self.model, shape, pipelined) / tp)
        t = ring_allreduce_time_s(n_bytes, n, group.nic_bw_bytes_per_s / tp, net.latency_s)
        if link:
            t = min(t, ring_allreduce_time_s(n_bytes, n, group.chip.link_bw_bytes_per_s,
                                             INTRA_NODE_LATENCY_S))
        early = self.builder.ready_s(shape)[0] if self.job.overlap_grad_sync else 0.0
        return max(0.0, t - early)

    def tokens_bound(self, classes: Classes, pipe_s: float) -> float:
        """An upper bound on `tokens_per_s` given the candidate's `pipeline_s`: its
        `sync_floor_s` added (the optimizer step, >= 0, left out: pricing it costs more
        than it cuts)."""
        replicas = sum(n for _, n in classes)
        zero1 = self.scorer.zero1_for(replicas)
        step = pipe_s + self.sync_floor_s(classes, zero1)
        return self.job.tokens_per_step / step * (1 + ROUND_OFF)

    def tokens_per_s(self, classes: Classes) -> float:
        pipe = self.pipeline_s(classes)
        if pipe is None:
            return 0.0
        replicas = sum(n for _, n in classes)
        shards = replicas if self.scorer.zero1_for(replicas) else 1
        if any(s.zero_shards > shards for s, _ in classes):
            return 0.0  # memory was checked assuming more replicas than this candidate has
        opt = max(self.optimizer_s(s, shards) for s, _ in classes)
        step = pipe + self.dp_sync_s(classes, shards > 1) + opt
        return self.job.tokens_per_step / step
