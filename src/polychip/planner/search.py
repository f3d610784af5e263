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
import itertools
import math
from collections.abc import Callable, Sequence

from polychip.planner.bounds import most_replicas
from polychip.planner.estimate import Estimator
from polychip.planner.mixed import LARGE, MixedTemplates
from polychip.planner.polish import polish
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.shapes import Shape
from polychip.planner.space import (
    micro_batch_sizes,
    segments_of,
    tp_degrees,
    zero_shard_buckets,
)

Classes = tuple[tuple[Shape, int], ...]
Progress = Callable[[float, str], None]

FILLS_PER_GROUP = 4  # fill options kept per group for the per-type cross product
EXACT_SHORTLIST = 24  # candidates scored exactly per search
FULL_ESTIMATES = 600  # candidates (best by pipeline time alone) given the full estimate
ALL_ESTIMATES_UP_TO = 4000  # ... or all of them when there are no more than this
FEW_COPIES = (1, 2, 3, 4, 6, 8)  # replica counts tried for every shape alone (small clusters)
LEFTOVER_LAYOUTS = 3  # fills of a mixed pipeline's leftover chips tried, one per stage layout
# (small clusters: on large ones a leftover is a small part of the plan)


class FastSearch:
    def __init__(self, scorer: Scorer, max_stages: int, progress: Progress | None = None):
        self.scorer, self.builder = scorer, scorer.builder
        self.cluster, self.model, self.job = scorer.cm.cluster, scorer.cm.model, scorer.job
        self.max_stages = max_stages
        self.progress = progress or (lambda f, m: None)
        self.estimator = Estimator(scorer)
        self.mixed = MixedTemplates(self.cluster, self.model, max_stages, self.job)

    # ---- shapes -----------------------------------------------------------------------------
    def _micro_ctx(self, bucket: int, mb: int) -> int | None:
        if self.builder.schedule != "gpipe":
            return None
        return max(1, math.ceil(self.job.global_batch / (bucket * mb)))

    def single_shapes(self, group: int, bucket: int, shards: int) -> list[Shape]:
        out = []
        g = self.cluster.groups[group]
        for seg in segments_of(g, self.model, self.job, self.max_stages):
            for mb in micro_batch_sizes(self.job.global_batch):
                s = self.builder.build((seg,), mb, shards, self._micro_ctx(bucket, mb))
                if s is not None:
                    out.append(s)
        return out

    # ---- fills --------------------------------------------------------------------------------
    def fills(
        self, ranked: list[Shape], budget: int, value: Callable[[Shape], float]
    ) -> list[Classes]:
        """Up to FILLS_PER_GROUP ways to use `budget` chips of one group (<= 2 shapes);
        `ranked`: the group's shapes, best value per chip first."""
        g = self.job.global_batch
        options: list[tuple[float, Classes]] = []
        for s1 in ranked[:12]:
            c1 = min(budget // s1.num_devices, g // s1.micro_batch_size)
            if c1 < 1:
                continue
            rest = budget - c1 * s1.num_devices
            fill: Classes = ((s1, c1),)
            for s2 in ranked:
                if s2 is not s1 and s2.num_devices <= rest:
                    fill = ((s1, c1), (s2, rest // s2.num_devices))
                    break
            options.append((sum(value(s) * n for s, n in fill), fill))
        options.sort(key=lambda x: -x[0])
        return [f for _, f in options[:FILLS_PER_GROUP]]

    # ---- the search ---------------------------------------------------------------------------
    def run(self, groups: Sequence[int]) -> Scored | None:
        job = self.job
        devices = sum(self.cluster.groups[g].num_devices for g in groups)
        gpipe = self.builder.schedule == "gpipe"
        # GPipe holds every micro-batch in flight, so memory depends on the replica count
        # through m = G / (replicas x mb): finer steps (x2), ZeRO-1 or not.
        buckets = zero_shard_buckets(
            min(job.global_batch, devices), job.allow_zero1 or gpipe, factor=2 if gpipe else 8
        )
        if job.allow_zero1:  # a context of more shards than replicas can be is empty
            buckets = [b for b in buckets if b <= most_replicas(self.builder, groups, b)]
        pool: dict[tuple, tuple[float, object, Classes]] = {}
        for bi, bucket in enumerate(buckets):
            self.progress(bi / len(buckets) * 0.8, f"searching (ZeRO shards {bucket})")
            shards = bucket if job.allow_zero1 else 1
            for family, cand in self._candidates(groups, bucket, shards):
                key = tuple(sorted((id(s), n) for s, n in cand))
                if key not in pool and self._memory_context_holds(cand):
                    pipe = self.estimator.pipeline_s(cand)
                    if pipe is not None:
                        pool[key] = (job.tokens_per_step / pipe, family, cand)
        ranked = self._ranked(list(pool.values()))
        self.progress(0.8, f"scoring {min(len(ranked), EXACT_SHORTLIST)} candidates exactly")
        best: Scored | None = None
        for _, cand in ranked[:EXACT_SHORTLIST]:
            best = better(best, self.scorer.score(cand, against=best))
        if best is None:  # nothing scored yet: walk down the whole ranking until one is a plan
            for _, cand in self._ranked(list(pool.values()), everything=True)[EXACT_SHORTLIST:]:
                best = self.scorer.score(cand)
                if best is not None:
                    break
        self.progress(0.9, "polishing")
        return polish(self.scorer, best)

    def _ranked(self, pool: list[tuple[float, object, Classes]], everything: bool = False
                ) -> list[tuple[float, Classes]]:
        """Stage 1: the pipeline time alone (an upper bound on tokens/s) picks the best
        FULL_ESTIMATES (all up to ALL_ESTIMATES_UP_TO) and the best of every family (mixed
        template); stage 2 gives them the full estimate (+ gradient sync and optimizer),
        best first. Estimates are computed in bound order and stop once no bound can reach
        the EXACT_SHORTLIST-th best estimate: the shortlist is the same (``everything``: no
        stop, the whole ranking)."""
        first = sorted(pool, key=lambda x: -x[0])
        limit = len(first) if len(first) <= ALL_ESTIMATES_UP_TO else FULL_ESTIMATES
        keep = {id(c): (b, c) for b, _, c in first[:limit]}
        seen_family: set = set()
        for b, family, c in first:
            if family not in seen_family:
                seen_family.add(family)
                keep[id(c)] = (b, c)
        estimates: dict[int, float] = {}
        top: list[float] = []  # the best EXACT_SHORTLIST estimates so far (a min-heap)
        for key, (bound, c) in sorted(keep.items(), key=lambda kv: -kv[1][0]):
            if not everything and len(top) == EXACT_SHORTLIST and bound < top[0]:
                break  # every estimate from here on is below the shortlist's last
            estimates[key] = e = self.estimator.tokens_per_s(c)
            if e > 0:
                heapq.heappush(top, e) if len(top) < EXACT_SHORTLIST else heapq.heappushpop(
                    top, e)
        second = [(estimates[k], c) for k, (_, c) in keep.items() if k in estimates]
        return sorted((x for x in second if x[0] > 0), key=lambda x: -x[0])

    def _memory_context_holds(self, cand: Classes) -> bool:
        """Shapes were fitted assuming optimizer state sharded over `zero_shards` replicas."""
        replicas = sum(n for _, n in cand)
        shards = replicas if self.scorer.zero1_for(replicas) else 1
        return all(s.zero_shards <= shards for s, _ in cand)

    def _candidates(
        self, groups: Sequence[int], bucket: int, shards: int
    ) -> list[tuple[object, Classes]]:
        singles = {g: self.single_shapes(g, bucket, shards) for g in groups}
        singles = {g: s for g, s in singles.items() if s}

        # reference step time: every group filled with its best steady-state shapes
        def rank(shapes: list[Shape], value: Callable[[Shape], float]) -> list[Shape]:
            return sorted(shapes, key=lambda s: -value(s) / s.num_devices)

        by_rate = {
            g: self.fills(
                rank(s, lambda x: x.rate), self.cluster.groups[g].num_devices, lambda x: x.rate
            )
            for g, s in singles.items()
        }
        ref = [c for opts in by_rate.values() if opts for c in opts[0]]
        t_ref = self.estimator.pipeline_s(tuple(ref)) or 1.0

        def value(s: Shape) -> float:
            return s.micro_batch_size * max(0.0, (t_ref - s.fill_s) / s.beat_s + 1)

        singles = {g: rank(shapes, value) for g, shapes in singles.items()}
        out: list[tuple[object, Classes]] = []
        options = {}
        for g, shapes in singles.items():
            opts = self.fills(shapes, self.cluster.groups[g].num_devices, value)
            opts += [o for o in by_rate[g][:2] if o not in opts]
            options[g] = [(), *opts]
        for combo in itertools.product(*options.values()):
            cand = tuple(c for part in combo for c in part)
            if cand:
                out.append((None, cand))
        if sum(self.cluster.groups[g].num_devices for g in singles) <= LARGE:
            for g, shapes in singles.items():  # few copies of one shape: sync and latency
                for s in shapes:  # can outweigh more replicas on small clusters
                    most = self.cluster.groups[g].num_devices // s.num_devices
                    for k in FEW_COPIES:
                        if k <= most:
                            out.append((None, ((s, k),)))
        best_tp = {  # a group that cannot hold the model alone still joins mixed pipelines
            g: max(singles[g], key=lambda s: s.rate / s.num_devices).template[0].tp
            if g in singles
            else max(tp_degrees(self.cluster.groups[g], self.model, self.job))
            for g in groups
        }
        # mixed pipelines: the single types' micro-batch sizes, and 1 (the most micro-batches:
        # the smallest bubble, which a pipeline over unequal chips may need more than they do)
        mbs = sorted(
            {1, *(s.micro_batch_size for opts in options.values() for o in opts for s, _ in o)}
        )
        if sum(self.cluster.groups[g].num_devices for g in singles) > LARGE:
            mbs = sorted(
                {1, *(opts[1][0][0].micro_batch_size for opts in options.values() if len(opts) > 1)}
            )
        memo: dict[tuple[int, int], list[Classes]] = {}
        small = sum(self.cluster.groups[g].num_devices for g in singles) <= LARGE
        layouts = LEFTOVER_LAYOUTS if small else 1

        def leftovers(g: int, budget: int) -> list[Classes]:
            """The best fill of a group's leftover chips, then the best of each other stage
            layout (gradient sync, which a fill's value leaves out, may favour fewer,
            deeper replicas), up to LEFTOVER_LAYOUTS in all on small clusters."""
            if (g, budget) not in memo:
                shapes, opts = singles.get(g, []), []
                while budget > 0 and len(opts) < layouts:
                    best = self.fills(shapes, budget, value)[:1]
                    if not best:
                        break
                    opts += best
                    used_layouts = {c.template for c, _ in best[0]}
                    shapes = [s for s in shapes if s.template not in used_layouts]
                memo[(g, budget)] = opts or [()]
            return memo[(g, budget)]

        def holds(replicas: int) -> bool:  # `_memory_context_holds` of this context's shapes
            return shards <= (replicas if self.scorer.zero1_for(replicas) else 1)

        for tpl in self.mixed.templates(list(groups), best_tp):
            kfit0 = min(self.cluster.groups[seg.group].num_devices // seg.num_devices
                        for seg in tpl)
            for mb in mbs:
                kfit = min(kfit0, self.job.global_batch // mb)
                ks = range(1, kfit + 1) if kfit <= 8 else sorted({1, kfit // 2, kfit})
                variants = []  # k copies plus the fills of the chips left (the leftovers)
                for k in ks:
                    used = {seg.group: seg.num_devices * k for seg in tpl}
                    variants.append((k, _fill_variants([
                        leftovers(g, self.cluster.groups[g].num_devices - used.get(g, 0))
                        for g in singles])))
                if not any(holds(k + sum(n for _, n in fill))
                           for k, fills in variants for fill in (*fills, ())):
                    continue  # no candidate of this pipeline has the replicas it assumes
                shape = self.builder.build(tpl, mb, shards, self._micro_ctx(bucket, mb))
                if shape is None:
                    continue
                for k, fills in variants:
                    core = ((shape, k),)
                    for n, fill in enumerate(fills):
                        out.append(((tpl, mb, k, True, n), core + fill))
                    if fills[0]:
                        out.append(((tpl, mb, k, False), core))
        return out


def _fill_variants(left: list[list[Classes]]) -> list[Classes]:
    """Every group's first leftover fill, then one group at a time at another of its fills."""
    fills = [tuple(c for opts in left for c in opts[0])]
    for i, opts in enumerate(left):
        for alt in opts[1:]:
            fills.append(tuple(c for j, o in enumerate(left) for c in (alt if j == i else o[0])))
    return fills
