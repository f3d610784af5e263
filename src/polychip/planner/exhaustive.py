"""The exhaustive planner: a slow, obviously correct oracle over the same space, for small
clusters. The fast planner is tested against it.

It enumerates every template (`space.all_templates`) with every micro-batch size; every
multiset of up to `max_classes` distinct (template, micro-batch) classes with every replica
count that fits the chips; ZeRO-1 on and off. For each, every replica's layer split is found
by brute force over all compositions of the layers, at the exact micro-batch count and
replica count it gets (memory checked for both); the batch split is exact
(`batchsplit.split_batch`, itself tested against brute force); the plan is placed
(`assign.py`) and scored by `CostModel.evaluate`. The only shortcut is exact: a candidate
whose pipeline time alone already allows no more tokens/s than the best plan found is not
placed and scored (gradient sync and the optimizer only add time).

Memory stays bounded: compositions are streamed (`shapes.build(..., keep=False)`) and, per
memory context, only the fastest shape for each micro-batch count is kept; candidates are
never listed, only the best plan. `deadline` (time.monotonic) ends the search with the best
plan so far and `proven = False`. Its size is estimated before it starts (`oracle.py`).
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.planner.batchsplit import BatchClass, split_batch
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.shapes import Shape
from polychip.planner.space import Template, all_templates, micro_batch_sizes, template_devices

Kind = tuple[Template, int]  # template, micro-batch size


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every way to write `total` as an ordered sum of `parts` positive integers."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


class TimeUp(Exception):
    """The deadline passed: the search stops with the best plan so far."""


@dataclass
class Table:
    """One memory context of one kind, streamed: the fastest shape per micro-batch count in
    [lo, hi], the least fill and the best steady rate of all its fitting shapes."""

    lo: int
    hi: int
    best: dict[int, tuple[float, Shape | None]] = field(default_factory=dict)
    fill_s: float = float("inf")
    rate: float = 0.0


def upper_envelope(lines: list[tuple[float, float]]) -> Callable[[float], float]:
    """max over lines (slope, intercept) of slope * t + intercept, as a function of t >= 0."""
    if not lines:
        return lambda t: 0.0
    hull: list[tuple[float, float]] = []
    for a, b in sorted(set(lines)):
        if hull and hull[-1][0] == a:
            hull.pop()
        while len(hull) >= 2:
            (a1, b1), (a2, b2) = hull[-2], hull[-1]
            # drop the middle line if the new one overtakes line 1 before line 2 does
            if (b - b1) * (a2 - a1) >= (b2 - b1) * (a - a1):
                hull.pop()
            else:
                break
        hull.append((a, b))
    cuts = [(b1 - b2) / (a2 - a1) for (a1, b1), (a2, b2) in itertools.pairwise(hull)]

    def value(t: float) -> float:
        a, b = hull[bisect_right(cuts, t)]
        return a * t + b

    return value



class Exhaustive:
    def __init__(
        self,
        scorer: Scorer,
        max_stages: int,
        max_classes: int = 3,
        progress: Callable[[float, str], None] | None = None,
        deadline: float | None = None,
    ):
        self.scorer, self.builder = scorer, scorer.builder
        self.cluster, self.model, self.job = scorer.cm.cluster, scorer.cm.model, scorer.job
        self.max_stages, self.max_classes = max_stages, max_classes
        self.progress = progress or (lambda f, m: None)
        self.deadline = deadline
        self.proven = True  # False when the deadline stopped the search
        self._tables: dict[tuple, Table] = {}
        self.candidates = 0
        self.shapes_built = 0
        self.sync_floor_s = 0.0
        self.best: Scored | None = None

    def _tick(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeUp

    # ---- layer splits by brute force, streamed ---------------------------------------------
    def _m_key(self, kind: Kind, m: int) -> int:
        if self.builder.schedule == "gpipe":
            return m
        return min(m, sum(seg.num_stages for seg in kind[0]))  # 1F1B holds <= S in flight

    def table(self, kind: Kind, shards: int, m_key: int) -> Table:
        """Every composition of `kind` that fits memory at this context, streamed: only the
        fastest per micro-batch count that maps to `m_key` is kept."""
        key = (kind, shards, m_key)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        tpl, mb = kind
        stages = sum(seg.num_stages for seg in tpl)
        many = self.builder.schedule != "gpipe" and m_key == stages
        out = Table(m_key, self.job.global_batch if many else m_key)
        for comp in compositions(self.model.num_layers, stages):
            self._tick()
            s = self.builder.build(tpl, mb, shards, m_key, layers=comp, keep=False)
            self.shapes_built += 1
            if s is None:
                continue
            out.fill_s = min(out.fill_s, s.form.floor_fill_s)  # a line below every span
            out.rate = max(out.rate, s.micro_batch_size / s.form.bottleneck_s)
            top = out.hi if s.max_micro_batches is None else min(out.hi, s.max_micro_batches)
            for m in range(out.lo, top + 1):
                t = s.time_s(m)
                if t < out.best.get(m, (float("inf"), None))[0]:
                    out.best[m] = (t, s)
        self._tables[key] = out
        return out

    def best_at(self, kind: Kind, shards: int, m: int) -> tuple[float, Shape | None]:
        """The fastest composition of `kind` for m micro-batches (time, shape)."""
        return self.table(kind, shards, self._m_key(kind, m)).best.get(m, (float("inf"), None))

    # ---- one multiset ---------------------------------------------------------------------
    def evaluate(self, classes: Sequence[tuple[Kind, int]]) -> None:
        """Score the multiset `classes` (ZeRO-1 on and off) into `self.best`."""
        replicas = sum(n for _, n in classes)
        zero1_options = [False, True] if self.job.allow_zero1 and replicas > 1 else [False]
        for zero1 in zero1_options:
            shards = replicas if zero1 else 1
            batch = [
                BatchClass(n, kind[1], lambda m, k=kind, z=shards: self.best_at(k, z, m)[0])
                for kind, n in classes
            ]
            if any(b.time_s(1) == float("inf") for b in batch):
                continue
            micro = split_batch(batch, self.job.global_batch)
            if micro is None:
                continue
            self.candidates += 1
            worst = max(b.time_s(m) for b, ms in zip(batch, micro, strict=True) for m in ms)
            worst += self.sync_floor_s if replicas > 1 else 0.0
            if self.best is not None and self.job.tokens_per_step / worst <= (
                self.best.tokens_per_s
            ):
                continue  # exact: sync and optimizer can only add time
            with_micro: dict[int, tuple[Shape, list[int]]] = {}
            for (kind, _), ms in zip(classes, micro, strict=True):
                for m in ms:
                    shape = self.best_at(kind, shards, m)[1]
                    assert shape is not None
                    with_micro.setdefault(id(shape), (shape, []))[1].append(m)
            self.best = better(self.best, self.scorer.score_placed(list(with_micro.values()),
                                                                   zero1))

    def _sync_floor_s(self, kinds: list[Kind], groups: Sequence[int]) -> float:
        """A lower bound on gradient sync for any plan of two or more replicas: a first-stage
        chip all-reduces at least one layer and the embedding; each all-reduce (ring inside
        an island, or across islands) moves at least its bytes once over the fastest link
        and pays two latencies. A chip alone on its node has the node's whole NIC; a
        measured link is never faster than a NIC."""
        tp = max((seg.tp for k in kinds for seg in k[0]), default=1)
        gs = [self.cluster.groups[i] for i in groups]
        bw = max(max(g.chip.link_bw_bytes_per_s, g.nic_bw_bytes_per_s) for g in gs)
        lat = min(INTRA_NODE_LATENCY_S, self.cluster.network.latency_s)
        params = self.model.layer_params + self.model.embedding_params
        return 2.0 * params / tp / bw + 4 * lat

    # ---- the enumeration ------------------------------------------------------------------
    def kinds(self, groups: Sequence[int]) -> Iterator[Kind]:
        """Every (template, micro-batch size) over `groups`."""
        sizes = micro_batch_sizes(self.job.global_batch)
        for tpl in all_templates(self.cluster, self.model, self.job, self.max_stages, groups):
            yield from ((tpl, mb) for mb in sizes)

    def run(self, groups: Sequence[int], incumbent: Scored | None = None) -> Scored | None:
        """The best plan over `groups`. `incumbent` (optional, e.g. the fast planner's plan)
        only prunes: a branch is cut when it provably cannot beat it. Past the deadline it
        returns the best so far and sets `proven = False`."""
        self.best = incumbent
        try:
            self._search(groups)
        except TimeUp:
            self.proven = False
        return self.best

    def _search(self, groups: Sequence[int]) -> None:
        most = min(self.job.global_batch,
                   sum(self.cluster.groups[i].num_devices for i in groups))
        loose = most if self.job.allow_zero1 else 1  # the most memory any plan can leave
        # Bounds valid for every memory context (they use the loosest one): a replica takes
        # at least `fill` (one micro-batch) and processes at most mb / bottleneck sequences
        # per second.
        self._fill: dict[Kind, float] = {}
        self._rate: dict[Kind, float] = {}
        for k in self.kinds(groups):
            t = self.table(k, loose, 1)
            if t.rate > 0:
                self._fill[k], self._rate[k] = t.fill_s, t.rate
        rate = self._rate
        chips = {k: sum(template_devices(k[0]).values()) for k in rate}
        self._kinds = sorted(self._fill, key=lambda k: -rate[k] / chips[k])
        # A replica of kind k finishes mb * (1 + (T - fill) / bottleneck) sequences by time T
        # at most (continuous relaxation; its beat is never below the bottleneck): a line in
        # T. Per chip, the best of all kinds is the upper envelope of those lines divided by
        # the kind's chips.
        self._envelope = upper_envelope([self._line(k, 1, per_chip=True) for k in self._kinds])
        # ZB-H1's first stage may be ready before the pipeline ends (its W's are not the
        # last): no floor on the sync after it
        self.sync_floor_s = (0.0 if self.builder.schedule == "zb-h1"
                             else self._sync_floor_s(self._kinds, groups))
        capacity = {i: self.cluster.groups[i].num_devices for i in groups}
        self._dfs(0, [], capacity, 0, 0.0, [])

    def _line(self, k: Kind, count: int, per_chip: bool = False) -> tuple[float, float]:
        """Sequences done by time T by `count` replicas of k, at most: (slope, intercept)."""
        a, mb = self._rate[k], k[1]
        d = sum(template_devices(k[0]).values()) if per_chip else 1
        return (count * a / d, count * mb * (1 - self._fill[k] * a / mb) / d)

    def _bound(self, slowest_fill: float, chosen: list[tuple[float, float]], chips_left: int,
               floor: float) -> float:
        """Tokens/s no completion can beat: the least T by which the chosen replicas plus
        the best possible use of the chips left could process the global batch."""
        g = self.job.global_batch

        def done(t: float) -> float:
            own = sum(max(0.0, a * t + b) for a, b in chosen)
            return own + chips_left * max(0.0, self._envelope(t))

        lo = slowest_fill
        if done(lo) >= g:
            return self.job.tokens_per_step / (lo + floor)
        hi = max(lo, 1e-12) * 2
        while done(hi) < g:
            hi *= 2
        for _ in range(40):
            mid = (lo + hi) / 2
            if done(mid) >= g:
                hi = mid
            else:
                lo = mid
        return self.job.tokens_per_step / (lo + floor)

    def _dfs(self, start: int, chosen: list[tuple[Kind, int]], left: dict[int, int], seqs: int,
             slowest: float, own: list[tuple[float, float]]) -> None:
        kinds, g = self._kinds, self.job.global_batch
        for j in range(start, len(kinds)):
            if not chosen:
                self.progress(j / len(kinds), "exhaustive search")
            kind = kinds[j]
            need = template_devices(kind[0])
            count = 0
            while True:
                self._tick()
                count += 1
                if any(left[grp] < need[grp] * count for grp in need):
                    break
                if seqs + kind[1] * count > g:
                    break
                rest = {grp: left[grp] - need.get(grp, 0) * count for grp in left}
                slow2 = max(slowest, self._fill[kind])
                own2 = [*own, self._line(kind, count)]
                floor = self.sync_floor_s if sum(n for _, n in chosen) + count > 1 else 0.0
                if self.best is not None and self._bound(
                    slow2, own2, sum(rest.values()), floor
                ) <= self.best.tokens_per_s:
                    break  # exact: more replicas only lower this bound
                classes = [*chosen, (kind, count)]
                self.evaluate(classes)
                if len(classes) < self.max_classes:
                    self._dfs(j + 1, classes, rest, seqs + kind[1] * count, slow2, own2)
