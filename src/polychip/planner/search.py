"""The fast planner: counts of replica shapes, ranked cheaply, the best few scored exactly.

For each memory context (optimizer state sharded over 1, 8, 64, ... replicas under ZeRO-1;
under GPipe also m = G / replicas micro-batches in flight, replicas 1, 2, 4, ...):

1. per node group, every single-type shape (stages x TP x micro-batch, layers split by the
   partition DP); per group a short list of *fills* -- up to two shapes with counts that use
   the group's chips -- ranked by the sequences they can process in a reference step time;
2. per-type candidates: the cross product of the groups' fills (a group may stay unused);
3. mixed candidates: pipelines spanning several groups in a given order, `k` copies using
   about 1/k of each group's chips, the leftovers filled per group as above;
4. every candidate is ranked by a cheap estimate (closed-form batch split, gradient sync and
   optimizer time from the cost model's components), the best ones are scored exactly
   (`scoring.Scorer`: `CostModel.evaluate`), and the winner is polished by local moves.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

from polychip.planner.assign import pack_group
from polychip.planner.bounds import most_replicas
from polychip.planner.candidates import ContextCandidates
from polychip.planner.estimate import Estimator
from polychip.planner.mixed import LARGE, MixedTemplates
from polychip.planner.polish import polish
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.shapes import Shape
from polychip.planner.space import (
    micro_batch_sizes,
    segments_of,
    zero_shard_buckets,
)

Classes = tuple[tuple[Shape, int], ...]
Progress = Callable[[float, str], None]
Pooled = tuple[float, object, Classes, float]  # pipeline bound on tokens/s, family, classes,
# pipeline seconds

EXACT_SHORTLIST = 24  # candidates scored exactly per search (<= LARGE chips: exact scores are
# cheap, and a replica's few micro-batches are what the closed-form batch split misjudges)
EXACT_SHORTLIST_LARGE = 8  # ... on more chips, where the estimate is sharp
# (tests/planner/test_estimate.py)
FULL_ESTIMATES = 600  # candidates (best by pipeline time alone) given the full estimate
ALL_ESTIMATES_UP_TO = 4000  # ... or all of them when there are no more than this


class FastSearch:
    def __init__(self, scorer: Scorer, max_stages: int, progress: Progress | None = None):
        self.scorer, self.builder = scorer, scorer.builder
        self.cluster, self.model, self.job = scorer.cm.cluster, scorer.cm.model, scorer.job
        self.max_stages = max_stages
        self.progress = progress or (lambda f, m: None)
        self.estimator = Estimator(scorer)
        self.mixed = MixedTemplates(self.cluster, self.model, max_stages, self.job)
        self._packed: dict[tuple, bool] = {}
        self.pool: list[Pooled] = []  # the last `run`'s candidates
        self.shortlist = EXACT_SHORTLIST

    # ---- shapes -----------------------------------------------------------------------------
    def micro_ctx(self, bucket: int, mb: int) -> int | None:
        """GPipe: the micro-batches in flight a shape of this context holds (None: 1F1B)."""
        if self.builder.schedule != "gpipe":
            return None
        return max(1, math.ceil(self.job.global_batch / (bucket * mb)))

    def single_shapes(self, group: int, bucket: int, shards: int) -> list[Shape]:
        out = []
        g = self.cluster.groups[group]
        for seg in segments_of(g, self.model, self.job, self.max_stages):
            for mb in micro_batch_sizes(self.job.global_batch):
                s = self.builder.build((seg,), mb, shards, self.micro_ctx(bucket, mb))
                if s is not None:
                    out.append(s)
        return out

    # ---- the search ---------------------------------------------------------------------------
    def run(self, groups: Sequence[int]) -> Scored | None:
        """The fastest plan found on node ``groups``; its candidates stay in `pool`."""
        self.pool = self._pool(groups)
        return self._best_of(self.pool)

    def refit(self, pool: Sequence[Pooled]) -> Scored | None:
        """The fastest plan among another search's candidates (its `pool`) with every
        shape built again by this search's builder: the layers split for its memory and
        timed with its closed form (ZB-H1's, for the 1F1B search's candidates). What a
        search of its own over the same groups would try, without generating them again."""
        self._size_shortlist(range(len(self.cluster.groups)))
        fitted: dict[tuple, Pooled] = {}
        shapes: dict[int, Shape | None] = {}  # by the other search's shape (ids: pool holds it)
        for _, family, cand, _ in pool:
            again = []
            for s, n in cand:
                shape = shapes.get(id(s), s)
                if shape is s:
                    shape = shapes[id(s)] = self.builder.build(s.template, s.micro_batch_size,
                                                               s.zero_shards)
                if shape is None:
                    break
                again.append((shape, n))
            else:
                key = tuple(sorted((id(s), n) for s, n in again))
                if key not in fitted:
                    pipe = self.estimator.pipeline_s(again)
                    if pipe is not None:
                        fitted[key] = (self.job.tokens_per_step / pipe, family, tuple(again),
                                       pipe)
        self.pool = list(fitted.values())
        return self._best_of(self.pool)

    def _pool(self, groups: Sequence[int]) -> list[Pooled]:
        """Every candidate on ``groups`` (`candidates.ContextCandidates`) in every memory
        context, with its pipeline time."""
        job = self.job
        devices = self._size_shortlist(groups)
        gpipe = self.builder.schedule == "gpipe"
        # GPipe holds every micro-batch in flight, so memory depends on the replica count
        # through m = G / (replicas x mb): finer steps (x2), ZeRO-1 or not.
        # small clusters: ZeRO-1 memory every x2 replicas (a shape that fits only sharded 4
        # ways is found: 4 A100 + 8 RTX 4090, Llama-2-7B, batch 64 -- 0.917 of the oracle
        # with steps of x8); large ones every x8 (a few replicas more or less matter little)
        buckets = zero_shard_buckets(
            min(job.global_batch, devices), job.allow_zero1 or gpipe,
            factor=2 if gpipe or devices <= LARGE else 8,
        )
        if job.allow_zero1:  # a context of more shards than replicas can be is empty
            buckets = [b for b in buckets if b <= most_replicas(self.builder, groups, b)]
        pool: dict[tuple, Pooled] = {}
        for bi, bucket in enumerate(buckets):
            self.progress(bi / len(buckets) * 0.8, f"searching (ZeRO shards {bucket})")
            shards = bucket if job.allow_zero1 else 1
            below = buckets[bi + 1] if bi + 1 < len(buckets) else None
            for family, cand in self._candidates(groups, bucket, shards, below):
                key = tuple(sorted((id(s), n) for s, n in cand))
                if key not in pool and self._memory_context_holds(cand, below):
                    pipe = self.estimator.pipeline_s(cand)
                    if pipe is not None:
                        pool[key] = (job.tokens_per_step / pipe, family, cand, pipe)
        return list(pool.values())

    def _size_shortlist(self, groups: Sequence[int]) -> int:
        """Set `shortlist` for a search over ``groups``; their chips."""
        devices = sum(self.cluster.groups[g].num_devices for g in groups)
        self.shortlist = EXACT_SHORTLIST if devices <= LARGE else EXACT_SHORTLIST_LARGE
        return devices

    def _best_of(self, pool: list[Pooled]) -> Scored | None:
        """The shortlist of ``pool`` scored exactly, the winner polished."""
        ranked = self._ranked(pool)
        self.progress(0.8, f"scoring {min(len(ranked), self.shortlist)} candidates exactly")
        best: Scored | None = None
        for _, cand in ranked[:self.shortlist]:
            best = better(best, self.scorer.score(cand, against=best))
        if best is None:  # nothing scored yet: walk down the whole ranking until one is a plan
            for _, cand in self._ranked(pool, everything=True)[self.shortlist:]:
                best = self.scorer.score(cand)
                if best is not None:
                    break
        self.progress(0.9, "polishing")
        return polish(self.scorer, best)

    def _ranked(self, pool: list[Pooled], everything: bool = False
                ) -> list[tuple[float, Classes]]:
        """Stage 1: the pipeline time alone (an upper bound on tokens/s) picks the best
        FULL_ESTIMATES (all up to ALL_ESTIMATES_UP_TO) and the best of every family (mixed
        template); stage 2 gives them the full estimate (+ gradient sync and optimizer),
        best first -- those that can reach the shortlist (`_estimates`; ``everything``:
        all of them, the whole ranking). A candidate whose replicas do not pack onto the
        cluster (`_packs`) is never a plan: it is left out, so the shortlist holds candidates
        that can be placed."""
        first = sorted(pool, key=lambda x: -x[0])
        limit = len(first) if len(first) <= ALL_ESTIMATES_UP_TO else FULL_ESTIMATES
        keep = {id(c): (b, c, pipe) for b, _, c, pipe in first[:limit]}
        seen_family: set = set()
        for b, family, c, pipe in first:  # (keep stays in bound order: these come later)
            if family not in seen_family:
                seen_family.add(family)
                keep[id(c)] = (b, c, pipe)
        if everything:
            estimates = {k: self.estimator.tokens_per_s(c) for k, (_, c, _) in keep.items()
                         if self._packs(c)}
        else:
            estimates = self._estimates(list(keep.items()))
        second = [(estimates[k], c) for k, (_, c, _) in keep.items() if k in estimates]
        return sorted((x for x in second if x[0] > 0), key=lambda x: -x[0])

    def _estimates(self, keep: list[tuple[int, tuple[float, Classes, float]]]
                   ) -> dict[int, float]:
        """Estimates of the candidates ``keep`` (in pipeline-bound order) that can reach the
        `shortlist`-th best estimate: best first by a tighter bound
        (`Estimator.tokens_bound`, a floor on the gradient sync added), computed only for
        candidates whose pipeline bound beats every tighter bound not yet estimated, until
        no bound left reaches the `shortlist`-th best estimate so far. Every candidate
        whose estimate reaches the final `shortlist`-th is estimated: the shortlist is
        that of estimating all of them."""
        estimates: dict[int, float] = {}
        top: list[float] = []  # the best `shortlist` estimates so far (a min-heap)
        bounded: list[tuple[float, int, Classes]] = []  # (-tighter bound, i, candidate)
        i = 0
        while i < len(keep) or bounded:
            if i < len(keep) and (not bounded or keep[i][1][0] > -bounded[0][0]):
                _, (_, c, pipe) = keep[i]  # its pipeline bound may beat every tighter one
                if self._packs(c):
                    heapq.heappush(bounded, (-self.estimator.tokens_bound(c, pipe), i, c))
                i += 1
                continue
            neg, j, c = heapq.heappop(bounded)
            if len(top) == self.shortlist and -neg < top[0]:
                break  # no bound left reaches the shortlist's last estimate
            estimates[keep[j][0]] = e = self.estimator.tokens_per_s(c)
            if e > 0:
                heapq.heappush(top, e) if len(top) < self.shortlist else heapq.heappushpop(
                    top, e)
        return estimates

    def _packs(self, cand: Classes) -> bool:
        """`assign.fits`: whether the candidate's replicas pack onto its groups' nodes (as
        `assign` places them; whether they do depends only on each group's segment sizes),
        cached per group and segment sizes."""
        sizes: dict[int, dict[int, int]] = {}
        for s, n in cand:
            for seg in s.template:
                per = sizes.setdefault(seg.group, {})
                per[seg.num_devices] = per.get(seg.num_devices, 0) + n
        for g, per in sizes.items():
            key = (g, tuple(sorted(per.items())))
            if key not in self._packed:
                group = self.cluster.groups[g]
                blocks = [(size, 1) for size, n in per.items() for _ in range(n)]
                self._packed[key] = (sum(size * n for size, n in per.items())
                                     <= group.num_devices
                                     and pack_group(group, blocks) is not None)
            if not self._packed[key]:
                return False
        return True

    def _memory_context_holds(self, cand: Classes, below: int | None = None) -> bool:
        """Shapes were fitted assuming optimizer state sharded over `zero_shards` replicas
        (GPipe: the micro-batches in flight of that many); ``below``: the next context's,
        which fits a candidate of that many replicas or more more tightly -- it is that
        context's."""
        return self.context_takes(max(s.zero_shards for s, _ in cand),
                                  sum(n for _, n in cand), below)

    def context_takes(self, shards: int, replicas: int, below: int | None) -> bool:
        """Whether the memory context of ``shards`` ZeRO shards (the next one's ``below``)
        takes a candidate of ``replicas``: at least that many shards, fewer than
        ``below``."""
        zero1 = self.scorer.zero1_for(replicas)
        return shards <= (replicas if zero1 else 1) and (below is None or replicas < below)

    def _candidates(
        self, groups: Sequence[int], bucket: int, shards: int, below: int | None = None
    ) -> list[tuple[object, Classes]]:
        return ContextCandidates(self, groups, bucket, shards, below).all()
