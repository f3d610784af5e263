"""The fast planner's candidates in one memory context (docs/planner.md, "The fast planner").

1. per node group, every single-type shape, ranked by the sequences it can process within a
   reference step time (every group filled with its best steady-state shapes);
2. per-type candidates: the cross product of each group's *fills* (up to two shapes with
   counts that use the group's chips), a group possibly unused; on small clusters also a
   few copies of one shape alone;
3. mixed candidates: pipelines over several groups in a given order, `k` copies using about
   1/k of each group's chips, the chips left filled per group as above.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from polychip.planner.mixed import LARGE
from polychip.planner.shapes import Shape
from polychip.planner.space import tp_degrees

if TYPE_CHECKING:
    from polychip.planner.search import FastSearch

Classes = tuple[tuple[Shape, int], ...]
Candidate = tuple[object, Classes]  # (family: None or the mixed pipeline's, classes)

FILLS_PER_GROUP = 4  # fill options kept per group for the per-type cross product
FEW_COPIES = (1, 2, 3, 4, 6, 8)  # replica counts tried for every shape alone (small clusters)
LEFTOVER_LAYOUTS = 3  # fills of a mixed pipeline's leftover chips tried, one per stage layout
# (small clusters: on large ones a leftover is a small part of the plan)


def fills(ranked: list[Shape], budget: int, value: Callable[[Shape], float],
          global_batch: int) -> list[Classes]:
    """Up to FILLS_PER_GROUP ways to use `budget` chips of one group (<= 2 shapes);
    `ranked`: the group's shapes, best value per chip first."""
    options: list[tuple[float, Classes]] = []
    for s1 in ranked[:12]:
        c1 = min(budget // s1.num_devices, global_batch // s1.micro_batch_size)
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


def _rank(shapes: list[Shape], value: Callable[[Shape], float]) -> list[Shape]:
    return sorted(shapes, key=lambda s: -value(s) / s.num_devices)


class ContextCandidates:
    """The candidates of one memory context: shapes fitted with optimizer state over
    ``shards`` replicas (context ``bucket``) on node ``groups``, for fewer replicas than
    ``below`` (the next context's: it fits more of them more tightly)."""

    def __init__(self, search: FastSearch, groups: Sequence[int], bucket: int, shards: int,
                 below: int | None = None):
        self.search, self.groups, self.bucket, self.shards = search, groups, bucket, shards
        self.below = below
        self.cluster, self.job = search.cluster, search.job
        singles = {g: search.single_shapes(g, bucket, shards) for g in groups}
        singles = {g: s for g, s in singles.items() if s}
        g_batch = self.job.global_batch
        by_rate = {g: fills(_rank(s, lambda x: x.rate), self.cluster.groups[g].num_devices,
                            lambda x: x.rate, g_batch) for g, s in singles.items()}
        ref = [c for opts in by_rate.values() if opts for c in opts[0]]
        t_ref = search.estimator.pipeline_s(tuple(ref)) or 1.0

        def value(s: Shape) -> float:
            return s.micro_batch_size * max(0.0, (t_ref - s.fill_s) / s.beat_s + 1)

        self.value = value
        self.singles = {g: _rank(shapes, value) for g, shapes in singles.items()}
        self.options = {}
        for g, shapes in self.singles.items():
            opts = fills(shapes, self.cluster.groups[g].num_devices, value, g_batch)
            opts += [o for o in by_rate[g][:2] if o not in opts]
            self.options[g] = [(), *opts]
        self.small = sum(self.cluster.groups[g].num_devices for g in self.singles) <= LARGE
        self._leftovers: dict[tuple[int, int], list[Classes]] = {}

    def all(self) -> list[Candidate]:
        return [*self.per_type(), *self.few_copies(), *self.mixed()]

    def per_type(self) -> list[Candidate]:
        """The cross product of the groups' fills (a group may stay unused)."""
        out: list[Candidate] = []
        for combo in itertools.product(*self.options.values()):
            cand = tuple(c for part in combo for c in part)
            if cand:
                out.append((None, cand))
        return out

    def few_copies(self) -> list[Candidate]:
        """Small clusters: few copies of one shape (sync and latency can outweigh more
        replicas)."""
        out: list[Candidate] = []
        if self.small:
            for g, shapes in self.singles.items():
                for s in shapes:
                    most = self.cluster.groups[g].num_devices // s.num_devices
                    out += [(None, ((s, k),)) for k in FEW_COPIES if k <= most]
        return out

    def mixed(self) -> list[Candidate]:
        """k copies of each mixed pipeline, the chips left filled per group; a pipeline is
        built only if some of its candidates have the replicas its context assumes."""
        search, cluster, out = self.search, self.cluster, []
        for tpl in search.mixed.templates(list(self.groups), self._best_tp()):
            kfit0 = min(cluster.groups[seg.group].num_devices // seg.num_devices for seg in tpl)
            for mb in self._micro_batch_sizes():
                kfit = min(kfit0, self.job.global_batch // mb)
                ks = range(1, kfit + 1) if kfit <= 8 else sorted({1, kfit // 2, kfit})
                variants = []  # k copies plus the fills of the chips left (the leftovers)
                for k in ks:
                    if self.below is not None and k >= self.below:
                        break  # k replicas or more: the next contexts' candidates
                    used = {seg.group: seg.num_devices * k for seg in tpl}
                    variants.append((k, _fill_variants([
                        self.leftovers(g, cluster.groups[g].num_devices - used.get(g, 0))
                        for g in self.singles])))
                if not any(self._holds(k + sum(n for _, n in fill))
                           for k, fills_ in variants for fill in (*fills_, ())):
                    continue  # no candidate of this pipeline has the replicas it assumes
                shape = search.builder.build(tpl, mb, self.shards,
                                             search.micro_ctx(self.bucket, mb))
                if shape is None:
                    continue
                for k, fills_ in variants:
                    core = ((shape, k),)
                    out += [((tpl, mb, k, True, n), core + f) for n, f in enumerate(fills_)]
                    if fills_[0]:
                        out.append(((tpl, mb, k, False), core))
        return out

    def leftovers(self, g: int, budget: int) -> list[Classes]:
        """The best fill of a group's leftover chips, then the best of each other stage
        layout (gradient sync, which a fill's value leaves out, may favour fewer, deeper
        replicas), up to LEFTOVER_LAYOUTS in all on small clusters."""
        if (g, budget) not in self._leftovers:
            shapes, opts = self.singles.get(g, []), []
            while budget > 0 and len(opts) < (LEFTOVER_LAYOUTS if self.small else 1):
                best = fills(shapes, budget, self.value, self.job.global_batch)[:1]
                if not best:
                    break
                opts += best
                used_layouts = {c.template for c, _ in best[0]}
                shapes = [s for s in shapes if s.template not in used_layouts]
            self._leftovers[(g, budget)] = opts or [()]
        return self._leftovers[(g, budget)]

    def _best_tp(self) -> dict[int, int]:
        """Per group the TP of its best shape per chip (a group that cannot hold the model
        alone still joins mixed pipelines, at its largest TP)."""
        search = self.search
        return {g: max(self.singles[g], key=lambda s: s.rate / s.num_devices).template[0].tp
                if g in self.singles
                else max(tp_degrees(self.cluster.groups[g], search.model, self.job))
                for g in self.groups}

    def _micro_batch_sizes(self) -> list[int]:
        """Mixed pipelines: the single types' micro-batch sizes (large clusters: of each
        group's best fill), and 1 (the most micro-batches: the smallest bubble, which a
        pipeline over unequal chips may need more than they do)."""
        if self.small:
            return sorted({1, *(s.micro_batch_size for opts in self.options.values()
                                for o in opts for s, _ in o)})
        return sorted({1, *(opts[1][0][0].micro_batch_size for opts in self.options.values()
                            if len(opts) > 1)})

    def _holds(self, replicas: int) -> bool:
        """Whether this context takes a candidate of that many (`FastSearch.context_takes`)."""
        return self.search.context_takes(self.shards, replicas, self.below)


def _fill_variants(left: list[list[Classes]]) -> list[Classes]:
    """Every group's first leftover fill, then one group at a time at another of its fills."""
    fills_ = [tuple(c for opts in left for c in opts[0])]
    for i, opts in enumerate(left):
        for alt in opts[1:]:
            fills_.append(tuple(c for j, o in enumerate(left) for c in (alt if j == i else o[0])))
    return fills_
