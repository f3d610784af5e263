"""Mixed pipeline templates for the fast planner: stages on several node groups.

A mixed template gives each of its groups about 1/k of that group's chips for k copies
(scaled down to max_stages). Small clusters (<= LARGE chips) get every order, TP vector,
copy count and smaller stage count; larger ones a pruned set (docs/planner.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from polychip.planner.space import Segment, tp_degrees
from polychip.spec.cluster import Cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

LARGE = 64  # chips: above this, mixed pipelines are generated from a pruned set
ALL_ORDERS_UP_TO = 3  # groups in a mixed pipeline: every order up to this many


class MixedTemplates:
    def __init__(self, cluster: Cluster, model: ModelSpec, max_stages: int, job: TrainingJob):
        self.cluster, self.model, self.max_stages, self.job = cluster, model, max_stages, job
        self.precision = job.precision
        self._templates: dict[tuple, list[tuple]] = {}

    def templates(self, groups: Sequence[int], best_tp: dict[int, int]) -> list[tuple]:
        """Pipelines over 2+ groups; the stage count per group follows from k copies using
        ~1/k of each group's chips (scaled down to max_stages). Cached per groups and TP
        degrees (every memory context of a search asks)."""
        key = (tuple(groups), tuple(sorted(best_tp.items())))
        if key not in self._templates:
            self._templates[key] = self._all_templates(groups, best_tp)
        return self._templates[key]

    def _all_templates(self, groups: Sequence[int], best_tp: dict[int, int]) -> list[tuple]:
        out: dict[tuple, None] = {}
        gs = [self.cluster.groups[i] for i in groups]
        small = sum(g.num_devices for g in gs) <= LARGE
        for size in range(2, len(gs) + 1):
            for subset in itertools.combinations(gs, size):
                for order in self._orders(subset):
                    for tps in self._tp_vectors(order, best_tp, small):
                        kmax = min(g.num_devices // t for g, t in zip(order, tps, strict=True))
                        for k in self._copies(order, tps, kmax, small):
                            most = [
                                g.num_devices // (k * t) for g, t in zip(order, tps, strict=True)
                            ]
                            for ns in self._stage_counts(most, small):
                                tpl = tuple(
                                    Segment(g.index, n, t)
                                    for g, n, t in zip(order, ns, tps, strict=True)
                                )
                                out[tpl] = None
        return list(out)

    def _orders(self, subset: Sequence) -> list[tuple]:
        if len(subset) <= ALL_ORDERS_UP_TO:
            return list(itertools.permutations(subset))
        keys = [
            lambda g: -g.chip.memory_bytes,
            lambda g: g.chip.memory_bytes,
            lambda g: -g.chip.achievable_flops(self.precision),
            lambda g: g.chip.achievable_flops(self.precision),
        ]
        return list(dict.fromkeys(tuple(sorted(subset, key=k)) for k in keys))

    def _copies(self, order: Sequence, tps: Sequence[int], kmax: int, small: bool) -> list[int]:
        """How many copies of a mixed pipeline to size it for: all on small clusters; else
        those using every chip of its groups within max_stages, and the fewest that fit."""
        if small:
            return list(range(1, kmax + 1))

        def stages(k: int) -> int:
            return sum(g.num_devices // (k * t) for g, t in zip(order, tps, strict=True))

        lo, hi = 1, kmax  # fewest copies whose share fits max_stages (stages(k) decreases)
        while lo < hi:
            mid = (lo + hi) // 2
            if stages(mid) <= self.max_stages:
                hi = mid
            else:
                lo = mid + 1
        out = {1, lo}
        whole = [
            g.num_devices // t for g, t in zip(order, tps, strict=True) if g.num_devices % t == 0
        ]
        if len(whole) == len(order):
            common = math.gcd(*whole)
            for k in range(lo, min(common, kmax) + 1):
                if common % k == 0 and stages(k) <= self.max_stages:
                    out.add(k)
        return sorted(out)

    def _tp_vectors(
        self, order: Sequence, best_tp: dict[int, int], small: bool
    ) -> list[tuple[int, ...]]:
        options = [tp_degrees(g, self.model, self.job) for g in order]
        if small and math.prod(len(o) for o in options) <= 16:
            return list(itertools.product(*options))
        out = {tuple(best_tp[g.index] for g in order)}
        for t in set(options[0]).intersection(*options[1:]):
            out.add(tuple(t for _ in order))
        out.add(tuple(max(o) for o in options))
        return sorted(out)

    def _stage_counts(self, most: list[int], small: bool) -> list[tuple[int, ...]]:
        if min(most) < 1:
            return []
        if small and math.prod(most) <= 64:  # small clusters: every count up to the share
            return [
                ns
                for ns in itertools.product(*(range(1, m + 1) for m in most))
                if sum(ns) <= self.max_stages
            ]
        ns = list(most)
        while sum(ns) > self.max_stages:
            scale = self.max_stages / sum(ns)
            ns = [max(1, min(n - 1, int(n * scale))) for n in ns]
            if sum(ns) > self.max_stages and max(ns) == 1:
                return []
        return [tuple(ns)]
