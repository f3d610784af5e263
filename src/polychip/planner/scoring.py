"""Exact scoring of a candidate (counts of replica shapes): split the batch, re-split each
shape's layers for the micro-batch count and replica count it actually gets, place it on
devices, and score it with `CostModel.evaluate` -- the only score any plan, baseline or the
ideal ever gets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from polychip.costmodel.comm import ring_allreduce_time_s
from polychip.costmodel.estimate import PlanCost
from polychip.plan.plan import Replica
from polychip.plan.segments import head_params, tied_copy
from polychip.planner.assign import assign
from polychip.planner.batchsplit import BatchClass, split_batch
from polychip.planner.shapes import Shape, ShapeBuilder
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

PRUNE_MARGIN = 1e-9  # a bound this far below the best: float round-off cannot matter
ROUND_OFF = 1e-9  # relative slack for float round-off in a floor
TIE = 1e-12  # `better`: tokens/s this close (relative) are a tie


@dataclass(frozen=True)
class Scored:
    classes: tuple[tuple[Shape, tuple[int, ...]], ...]  # shape, micro-batches per replica
    replicas: tuple[Replica, ...]
    zero1: bool
    cost: PlanCost
    schedule: str = "1f1b"  # what `cost` priced (planner/schedules.py may re-price it)
    virtual_stages: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.cost.tokens_per_s

    @property
    def num_replicas(self) -> int:
        return len(self.replicas)


def batch_classes(classes: Sequence[tuple[Shape, int]]) -> list[BatchClass]:
    return [BatchClass(n, s.micro_batch_size, s.time_s, s.max_micro_batches) for s, n in classes]


def pipeline_bound_s(classes: Sequence[tuple[Shape, int]], global_batch: int) -> float | None:
    """The slowest replica's pipeline time under the best batch split (None: no split)."""
    micro = split_batch(batch_classes(classes), global_batch)
    if micro is None:
        return None
    return max(s.time_s(m) for (s, _), ms in zip(classes, micro, strict=True) for m in ms)


class Scorer:
    """Exact scores of candidates, cached. ``prune``: `score(..., against=best)` skips
    placing and evaluating a candidate that provably cannot beat ``best`` (`bound_s`); off
    when every scored candidate matters (re-ranking, the cost objective)."""

    def __init__(self, builder: ShapeBuilder, prune: bool = False):
        self.builder, self.prune = builder, prune
        self.cm, self.job = builder.cm, builder.job
        self.evaluations = 0
        self.pruned = 0
        self._seen: dict[tuple, Scored | None] = {}
        self._opt: dict[tuple, float] = {}
        self._reps: dict[tuple, Replica] = {}  # one replica per template and layer split
        cluster = self.cm.cluster
        self._floor_nics: dict[str, float] | None = None  # `_sync_floor_s`: the fastest NIC
        if builder.schedule in ("1f1b", "gpipe") and self.cm.profile is None:  # per island
            self._floor_nics = {}
            for g in cluster.groups:
                island = g.chip.island
                self._floor_nics[island] = max(self._floor_nics.get(island, 0.0),
                                               g.nic_bw_bytes_per_s)
        self._floor_latency = min([cluster.network.latency_s, *(
            link.latency_s for link in cluster.links if link.latency_s is not None)])

    def zero1_for(self, num_replicas: int) -> bool:
        return self.job.allow_zero1 and num_replicas > 1

    def refine(
        self, classes: Sequence[tuple[Shape, int]]
    ) -> tuple[list[tuple[Shape, int]], tuple[tuple[int, ...], ...]] | None:
        """Batch split, then each shape re-split for its real micro-batch and replica counts
        (kept only where the slowest replica gets faster)."""
        g = self.job.global_batch
        current = list(classes)
        micro = split_batch(batch_classes(current), g)
        if micro is None:
            return None
        worst = max(s.time_s(m) for (s, _), ms in zip(current, micro, strict=True) for m in ms)
        replicas = sum(n for _, n in current)
        shards = replicas if self.zero1_for(replicas) else 1
        for _ in range(2):
            tried = []
            for (s, n), ms in zip(current, micro, strict=True):
                top = max(ms)
                new = self.builder.build(
                    s.template, s.micro_batch_size, shards, top, float(top - 1)
                )
                tried.append((new if new is not None else s, n))
            micro2 = split_batch(batch_classes(tried), g)
            if micro2 is None:
                break
            worst2 = max(s.time_s(m) for (s, _), ms in zip(tried, micro2, strict=True) for m in ms)
            if worst2 >= worst * (1 - 1e-12):
                break
            current, micro, worst = tried, micro2, worst2
        return current, micro

    def score_placed(
        self, with_micro: Sequence[tuple[Shape, Sequence[int]]], zero1: bool
    ) -> Scored | None:
        """Place shapes with their micro-batches per replica and score them exactly."""
        replicas = assign(self.cm.cluster, with_micro)
        if replicas is None:
            return None
        self.evaluations += 1
        cost = self.cm.evaluate(replicas, self.builder.schedule, zero1)
        if not cost.feasible or not math.isfinite(cost.step_time_s):
            return None
        return Scored(tuple((s, tuple(ms)) for s, ms in with_micro), replicas, zero1, cost,
                      self.builder.schedule)

    def scored(self) -> list[Scored]:
        """Every candidate scored exactly so far that is a plan (all searches)."""
        return [s for s in self._seen.values() if s is not None]

    def optimizer_s(self, shape: Shape, shards: int) -> float:
        """`CostModel.optimizer_time_s` of one replica of ``shape`` (the slowest device's
        AdamW step: every replica of a shape takes the same)."""
        key = (shape.template, shape.layers, shards)  # all the step depends on
        if key not in self._opt:
            rep = self._reps.get(key[:2])
            if rep is None:
                rep = self._reps[key[:2]] = self.builder.representative(shape)
            self._opt[key] = self.cm.optimizer_time_s((rep,), shards)
        return self._opt[key]

    def bound_s(self, shapes: Sequence[tuple[Shape, int]], micro: Sequence[Sequence[int]]
                ) -> float:
        """A lower bound on the step `CostModel.evaluate` gives these shapes placed with
        these micro-batches: each shape's busiest pipeline (the shapes' closed form is the
        cost model's under their placement, without a profile's host work) plus the sync of
        its first stage (`_sync_floor_s`), the slowest of them, plus the optimizer step
        (exact); the rest of the gradient sync and host work left out (>= 0)."""
        replicas = sum(len(ms) for ms in micro)
        zero1 = self.zero1_for(replicas)
        pipelined = any(s.num_stages > 1 for s, _ in shapes)
        pipe = max(s.time_s(max(ms)) + self._sync_floor_s(s, len(ms), zero1, pipelined)
                   for (s, _), ms in zip(shapes, micro, strict=True))
        shards = replicas if zero1 else 1
        return pipe + max(self.optimizer_s(s, shards) for s, _ in shapes)

    def _sync_floor_s(self, shape: Shape, n: int, zero1: bool, pipelined: bool) -> float:
        """What the gradient sync adds after the slowest of ``n`` replicas of ``shape``
        (1F1B, GPipe; analytic figures), at least.

        Its first stage's last backward ends its pipeline (`gradsync.stage_ends`), after
        which it syncs its segments (its layers, the embedding, the head if it is the
        only stage) one after the other, each held by the first stage of all n replicas
        (`gradsync.exposed_sync_s`): the step is at least the replica's pipeline plus
        their syncs. Where n first stages of TP t do not fit one node (n t > chips per
        node), each segment's ring inside their island crosses a NIC; its hops run in
        every island step (reduce-scatter and all-gather, or all-reduce: 2 (p - 1) ring
        steps, p >= n, sending 2 (p - 1) / p of the bytes of a piece), each at most the
        node's NIC / the pieces (`piecesync.kind_figures`: a NIC side carries at least
        its own hop of every piece), with at least the smallest inter-node latency. That
        is the ring all-reduce of the segment's bytes over the fastest NIC of the island,
        affine in the bytes with a non-negative intercept: summed over the segments, at
        least that of the stage's parameters."""
        if n < 2 or self._floor_nics is None:
            return 0.0
        g, tp = shape.stage_groups[0]
        group = self.cm.cluster.groups[g]
        if n * tp <= group.chips_per_node:
            return 0.0
        n_bytes = sync_bytes_per_param(self.job, zero1) * first_stage_params(
            self.cm.model, shape, pipelined)
        floor = ring_allreduce_time_s(n_bytes, n, self._floor_nics[group.chip.island],
                                      self._floor_latency)
        return floor * (1 - ROUND_OFF)

    def score(self, classes: Sequence[tuple[Shape, int]], against: Scored | None = None
              ) -> Scored | None:
        """The exact score of a candidate, or None if it cannot be a plan (or, pruning,
        if it provably cannot beat ``against``: then not cached)."""
        classes = [(s, n) for s, n in classes if n > 0]
        if not classes:
            return None
        key = tuple(sorted((id(s), n) for s, n in classes))
        if key in self._seen:
            return self._seen[key]
        out = None
        refined = self.refine(classes)
        if refined is not None:
            shapes, micro = refined
            if self.prune and against is not None and (
                    self.job.tokens_per_step / self.bound_s(shapes, micro)
                    < against.tokens_per_s * (1 - PRUNE_MARGIN)):
                self.pruned += 1
                return None
            with_micro = [(s, ms) for (s, _), ms in zip(shapes, micro, strict=True)]
            out = self.score_placed(with_micro, self.zero1_for(sum(len(ms) for ms in micro)))
        self._seen[key] = out
        return out


def sync_bytes_per_param(job: TrainingJob, zero1: bool) -> float:
    """Bytes a parameter's gradient sync moves per all-reduce pass: its gradient in the
    reduce dtype, or under ZeRO-1 half of it (the reduce-scatter) and half the parameter in
    the compute dtype (the all-gather)."""
    return (job.reduce_bytes + job.compute_bytes) / 2 if zero1 else job.reduce_bytes


def first_stage_params(model: ModelSpec, shape: Shape, pipelined: bool) -> int:
    """What a shape's first stage syncs: its layers and the embedding, and the head when
    it is the only stage (the head's tied copy when some replica is pipelined)."""
    params = shape.layers[0] * model.layer_params + model.embedding_params
    if shape.num_stages == 1:
        params += head_params(model, tied_copy(model, pipelined))
    return params


def better(a: Scored | None, b: Scored | None) -> Scored | None:
    """The faster of two (ties: fewer replicas, then the first)."""
    if a is None:
        return b
    if b is None:
        return a
    if b.tokens_per_s > a.tokens_per_s * (1 + TIE):
        return b
    if b.tokens_per_s >= a.tokens_per_s * (1 - TIE) and b.num_replicas < a.num_replicas:
        return b
    return a
