"""The exhaustive planner: a slow, obviously correct oracle over the same space, for small
clusters. The fast planner is tested against it.

It enumerates every template (`space.all_templates`) with every micro-batch size; every
multiset of up to `max_classes` distinct (template, micro-batch) classes with every replica
count that fits the chips; ZeRO-1 on and off. For each, every replica's layer split is found
by brute force over all compositions of the layers, at the exact micro-batch count and
replica count it gets (memory checked for both); the batch split is exact
(`partition.split_batch`, itself tested against brute force); the plan is placed
(`assign.py`) and scored by `CostModel.evaluate`. The only shortcut is exact: a candidate
whose pipeline time alone already allows no more tokens/s than the best plan found is not
placed and scored (gradient sync and the optimizer only add time).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from polychip.planner.partition import BatchClass, split_batch
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
        self._times: dict[tuple, tuple[float, Shape]] = {}
        self.candidates = 0

    # ---- layer splits by brute force -------------------------------------------------------
    def _m_key(self, kind: Kind, m: int) -> int:
        if self.builder.schedule == "gpipe":
            return m
        return min(m, sum(seg.num_stages for seg in kind[0]))  # 1F1B holds <= S in flight

    def lines(self, kind: Kind, shards: int, m_key: int) -> list[Shape]:
        """One shape per composition that fits memory at this context."""
        key = (kind, shards, m_key)
        if key not in self._lines:
            tpl, mb = kind
            stages = sum(seg.num_stages for seg in tpl)
            comps = self._comps.setdefault(stages, compositions(self.model.num_layers, stages))
            shapes = [self.builder.build(tpl, mb, shards, m_key, layers=c) for c in comps]
            self._lines[key] = [s for s in shapes if s is not None]
        return self._lines[key]

    def best_at(self, kind: Kind, shards: int, m: int) -> tuple[float, Shape | None]:
        key = (kind, shards, m)
        if key not in self._times:
            best: tuple[float, Shape | None] = (float("inf"), None)
            for s in self.lines(kind, shards, self._m_key(kind, m)):
                if s.max_micro_batches is not None and m > s.max_micro_batches:
                    continue
                t = s.time_s(m)
                if t < best[0]:
                    best = (t, s)
            self._times[key] = best  # type: ignore[assignment]
        return self._times[key]  # type: ignore[return-value]

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

    # ---- the enumeration ------------------------------------------------------------------
    def run(self, groups: Sequence[int], incumbent: Scored | None = None) -> Scored | None:
        """The best plan over `groups`. `incumbent` (optional, e.g. the fast planner's plan)
        only prunes: a branch is cut when it provably cannot beat it."""
        g = self.job.global_batch
        kinds: list[Kind] = [
            (tpl, mb)
            for tpl in all_templates(self.cluster, self.model, self.max_stages, groups)
            for mb in micro_batch_sizes(g)
        ]
        if len(kinds) > MAX_KINDS:
            raise PolychipError(
                f"--exhaustive would enumerate {len(kinds)} pipeline shapes (limit "
                f"{MAX_KINDS}): it is an oracle for small clusters; lower --max-stages or "
                "drop --exhaustive"
            )
        most = min(g, sum(self.cluster.groups[i].num_devices for i in groups))
        loose = most if self.job.allow_zero1 else 1  # the most memory any plan can leave
        # Bounds valid for every memory context (they use the loosest one): a replica takes
        # at least `fill` (one micro-batch) and processes at most mb / beat sequences per s.
        fill: dict[Kind, float] = {}
        rate: dict[Kind, float] = {}
        for k in kinds:
            lines = self.lines(k, loose, 1)
            if lines:
                fill[k] = min(x.fill_s for x in lines)
                rate[k] = max(x.micro_batch_size / x.beat_s for x in lines)
        kinds = sorted(fill, key=lambda k: -rate[k] / sum(template_devices(k[0]).values()))
        density = max((rate[k] / sum(template_devices(k[0]).values()) for k in kinds), default=0)
        capacity = {i: self.cluster.groups[i].num_devices for i in groups}
        best: Scored | None = incumbent

        def bound(slowest_fill: float, speed: float, chips_left: int) -> float:
            t = max(slowest_fill, g / (speed + chips_left * density))
            return self.job.tokens_per_step / t

        def dfs(
            start: int,
            chosen: list[tuple[Kind, int]],
            left: dict[int, int],
            seqs: int,
            slowest: float,
            speed: float,
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
                    slow2, speed2 = max(slowest, fill[kind]), speed + count * rate[kind]
                    if best is not None and bound(slow2, speed2, sum(rest.values())) <= (
                        best.tokens_per_s
                    ):
                        break  # exact: more replicas only lower this bound
                    classes = [*chosen, (kind, count)]
                    best = self.evaluate(classes, best)
                    if len(classes) < self.max_classes:
                        dfs(j + 1, classes, rest, seqs + kind[1] * count, slow2, speed2)

        dfs(0, [], capacity, 0, 0.0, 0.0)
        return best
