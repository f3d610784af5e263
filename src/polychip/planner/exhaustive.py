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
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Callable, Sequence

from polychip.costmodel.compute import INTRA_NODE_LATENCY_S
from polychip.planner.batchsplit import BatchClass, split_batch
from polychip.planner.scoring import Scored, Scorer, better
from polychip.planner.shapes import Shape
from polychip.planner.space import Template, all_templates, micro_batch_sizes, template_devices
from polychip.spec.errors import PolychipError

Kind = tuple[Template, int]  # template, micro-batch size
MAX_KINDS = 5000


def compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to write `total` as an ordered sum of `parts` positive integers."""
    out = []
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        out.append(tuple(b - a for a, b in itertools.pairwise(bounds)))
    return out


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
    ):
        self.scorer, self.builder = scorer, scorer.builder
        self.cluster, self.model, self.job = scorer.cm.cluster, scorer.cm.model, scorer.job
        self.max_stages, self.max_classes = max_stages, max_classes
        self.progress = progress or (lambda f, m: None)
        self._comps: dict[int, list[tuple[int, ...]]] = {}
        self._lines: dict[tuple, list[Shape]] = {}
        self._times: dict[tuple, dict[int, tuple[float, Shape | None]]] = {}
        self.candidates = 0
        self.sync_floor_s = 0.0

    # ---- layer splits by brute force -------------------------------------------------------
    def _m_key(self, kind: Kind, m: int) -> int:
        if self.builder.schedule == "gpipe":
            return m
        return min(m, sum(seg.num_stages for seg in kind[0]))  # 1F1B holds <= S in flight

    def lines(self, kind: Kind, shards: int, m_key: int) -> list[Shape]:
        """One shape per composition that fits memory at this context."""
        key = (id(kind), shards, m_key)
        if key not in self._lines:
            tpl, mb = kind
            stages = sum(seg.num_stages for seg in tpl)
            comps = self._comps.setdefault(stages, compositions(self.model.num_layers, stages))
            shapes = [self.builder.build(tpl, mb, shards, m_key, layers=c) for c in comps]
            self._lines[key] = [s for s in shapes if s is not None]
        return self._lines[key]

    def best_at(self, kind: Kind, shards: int, m: int) -> tuple[float, Shape | None]:
        """The fastest composition of `kind` for m micro-batches (time, shape)."""
        table = self._times.get((id(kind), shards))
        if table is None:
            table = self._times[(id(kind), shards)] = {}
        hit = table.get(m)
        if hit is None:
            hit = (float("inf"), None)
            for s in self.lines(kind, shards, self._m_key(kind, m)):
                if s.max_micro_batches is not None and m > s.max_micro_batches:
                    continue
                t = s.time_s(m)
                if t < hit[0]:
                    hit = (t, s)
            table[m] = hit
        return hit

    # ---- one multiset ---------------------------------------------------------------------
    def evaluate(self, classes: Sequence[tuple[Kind, int]], best: Scored | None) -> Scored | None:
        replicas = sum(n for _, n in classes)
        g = self.job.global_batch
        zero1_options = [False, True] if self.job.allow_zero1 and replicas > 1 else [False]
        for zero1 in zero1_options:
            shards = replicas if zero1 else 1
            batch = [
                BatchClass(n, kind[1], lambda m, k=kind, z=shards: self.best_at(k, z, m)[0])
                for kind, n in classes
            ]
            if any(b.time_s(1) == float("inf") for b in batch):
                continue
            micro = split_batch(batch, g)
            if micro is None:
                continue
            self.candidates += 1
            worst = max(b.time_s(m) for b, ms in zip(batch, micro, strict=True) for m in ms)
            worst += self.sync_floor_s if replicas > 1 else 0.0
            if best is not None and self.job.tokens_per_step / worst <= best.tokens_per_s:
                continue  # exact: sync and optimizer can only add time
            with_micro: dict[int, tuple[Shape, list[int]]] = {}
            for (kind, _), ms in zip(classes, micro, strict=True):
                for m in ms:
                    shape = self.best_at(kind, shards, m)[1]
                    assert shape is not None
                    with_micro.setdefault(id(shape), (shape, []))[1].append(m)
            scored = self.scorer.score_placed(list(with_micro.values()), zero1)
            best = better(best, scored)
        return best

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
    def kinds(self, groups: Sequence[int]) -> list[Kind]:
        """Every (template, micro-batch size); refuses spaces too big for an oracle."""
        out: list[Kind] = []
        sizes = micro_batch_sizes(self.job.global_batch)
        for tpl in all_templates(self.cluster, self.model, self.job, self.max_stages, groups):
            out.extend((tpl, mb) for mb in sizes)
            if len(out) > MAX_KINDS:
                raise PolychipError(
                    f"--exhaustive would enumerate more than {MAX_KINDS} pipeline shapes: it "
                    f"is an oracle for small clusters; lower --max-stages (now "
                    f"{self.max_stages}) or drop --exhaustive"
                )
        return out

    def run(self, groups: Sequence[int], incumbent: Scored | None = None) -> Scored | None:
        """The best plan over `groups`. `incumbent` (optional, e.g. the fast planner's plan)
        only prunes: a branch is cut when it provably cannot beat it."""
        g = self.job.global_batch
        kinds = self.kinds(groups)
        most = min(g, sum(self.cluster.groups[i].num_devices for i in groups))
        loose = most if self.job.allow_zero1 else 1  # the most memory any plan can leave
        # Bounds valid for every memory context (they use the loosest one): a replica takes
        # at least `fill` (one micro-batch) and processes at most mb / bottleneck sequences
        # per second.
        fill: dict[Kind, float] = {}
        rate: dict[Kind, float] = {}
        for k in kinds:
            lines = self.lines(k, loose, 1)
            if lines:
                fill[k] = min(x.fill_s for x in lines)
                rate[k] = max(x.micro_batch_size / x.form.bottleneck_s for x in lines)
        kinds = sorted(fill, key=lambda k: -rate[k] / sum(template_devices(k[0]).values()))
        # A replica of kind k finishes mb * (1 + (T - fill) / bottleneck) sequences by time T
        # at most (continuous relaxation; its beat is never below the bottleneck): a line in
        # T. Per chip, the best of all kinds is the upper envelope of those lines divided by
        # the kind's chips.
        lines = []
        for k in kinds:
            d = sum(template_devices(k[0]).values())
            lines.append((rate[k] / d, k[1] * (1 - fill[k] * rate[k] / k[1]) / d))
        envelope = upper_envelope(lines)
        capacity = {i: self.cluster.groups[i].num_devices for i in groups}
        best: Scored | None = incumbent
        self.sync_floor_s = self._sync_floor_s(kinds, groups)

        def bound(
            slowest_fill: float,
            chosen_lines: list[tuple[float, float]],
            chips_left: int,
            floor: float,
        ) -> float:
            """Tokens/s no completion can beat: the least T by which the chosen replicas plus
            the best possible use of the chips left could process the global batch."""

            def done(t: float) -> float:
                own = sum(max(0.0, a * t + b) for a, b in chosen_lines)
                return own + chips_left * max(0.0, envelope(t))

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

        def dfs(
            start: int,
            chosen: list[tuple[Kind, int]],
            left: dict[int, int],
            seqs: int,
            slowest: float,
            own: list[tuple[float, float]],
        ):
            nonlocal best
            for j in range(start, len(kinds)):
                if not chosen:
                    self.progress(j / len(kinds), "exhaustive search")
                kind = kinds[j]
                need = template_devices(kind[0])
                count = 0
                while True:
                    count += 1
                    if any(left[grp] < need[grp] * count for grp in need):
                        break
                    if seqs + kind[1] * count > g:
                        break
                    rest = {grp: left[grp] - need.get(grp, 0) * count for grp in left}
                    slow2 = max(slowest, fill[kind])
                    a = rate[kind]
                    own2 = [*own, (count * a, count * kind[1] * (1 - fill[kind] * a / kind[1]))]
                    many = sum(n for _, n in chosen) + count > 1
                    floor = self.sync_floor_s if many else 0.0
                    if best is not None and bound(slow2, own2, sum(rest.values()), floor) <= (
                        best.tokens_per_s
                    ):
                        break  # exact: more replicas only lower this bound
                    classes = [*chosen, (kind, count)]
                    best = self.evaluate(classes, best)
                    if len(classes) < self.max_classes:
                        dfs(j + 1, classes, rest, seqs + kind[1] * count, slow2, own2)

        dfs(0, [], capacity, 0, 0.0, [])
        return best
