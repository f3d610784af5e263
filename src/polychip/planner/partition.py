"""Uneven splits: layers over the stages of one pipeline, the global batch over replicas.

Pure functions over cost arrays and step-time functions -- no cluster, no cost model --
each tested against brute force on random inputs (tests/planner/test_partition.py).

Layers (AMP / Alpa style): stage `s` holding `n` layers costs `costs[s][n]` seconds per
micro-batch (`inf` where it does not fit memory), non-decreasing in `n`. A pipeline with `m`
micro-batches takes `fixed + sum(stage costs) + (m - 1) * max(floor, max stage cost)` under
1F1B / GPipe (the cost model's closed form), so the split minimises
`weight * max(floor, bottleneck) + sum` with `weight = m - 1`; `weight = inf` minimises the
bottleneck first, then the sum (the steady state of many micro-batches).

Batch: replicas of a class are identical; replica `r` given `m` micro-batches of
`micro_batch_size` sequences takes `time_s(m)` seconds (non-decreasing). The split gives every
replica at least one micro-batch, makes the shares sum exactly to the global batch and
minimises the slowest replica's time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INF = math.inf
BIG = 1.0e308  # above every finite cost, below INF


@dataclass(frozen=True)
class LayerSplit:
    layers: tuple[int, ...]  # layers per stage, each >= 1, summing to the model's layers
    bottleneck_s: float  # the slowest stage's cost
    total_s: float  # the sum of the stage costs

    def objective(self, weight: float, floor: float = 0.0) -> float:
        return weight * max(floor, self.bottleneck_s) + self.total_s


def _caps(costs: Sequence[Sequence[float]], beta: float, num_layers: int) -> list[int]:
    """Per stage, the most layers whose cost stays <= beta (0: not even one)."""
    return [bisect_right(c, beta, 1, num_layers + 1) - 1 for c in costs]


def _min_sum(
    costs: Sequence[Sequence[float]], caps: Sequence[int], num_layers: int
) -> LayerSplit | None:
    """Least total cost with 1 <= n_s <= caps[s] and sum n_s = num_layers (DP over stages)."""
    num_stages = len(costs)
    suffix = [0] * (num_stages + 1)
    for s in range(num_stages - 1, -1, -1):
        suffix[s] = suffix[s + 1] + caps[s]
    if suffix[0] < num_layers or min(caps) < 1:
        return None
    best: dict[int, float] = {0: 0.0}
    choices: list[dict[int, int]] = []
    for s in range(num_stages):
        nxt: dict[int, float] = {}
        arg: dict[int, int] = {}
        most = num_layers - (num_stages - s - 1)  # leave one layer for each later stage
        least = num_layers - suffix[s + 1]  # later stages cannot take more than their caps
        row = costs[s]
        for j, v in best.items():
            for n in range(max(1, least - j), min(caps[s], most - j) + 1):
                w = v + row[n]
                k = j + n
                if w < nxt.get(k, INF):
                    nxt[k] = w
                    arg[k] = n
        best = nxt
        choices.append(arg)
    if num_layers not in best:
        return None
    layers = []
    j = num_layers
    for s in range(num_stages - 1, -1, -1):
        n = choices[s][j]
        layers.append(n)
        j -= n
    layers.reverse()
    stage_costs = [costs[s][n] for s, n in enumerate(layers)]
    return LayerSplit(tuple(layers), max(stage_costs), math.fsum(stage_costs))


def split_layers(
    costs: Sequence[Sequence[float]],
    num_layers: int,
    *,
    weight: float = INF,
    floor: float = 0.0,
    max_bottlenecks: int | None = None,
) -> LayerSplit | None:
    """The split of `num_layers` identical layers over `len(costs)` stages minimising
    `weight * max(floor, bottleneck) + sum` (module docstring); None if nothing fits.

    `costs[s]` has `num_layers + 1` entries (index = layers held; index 0 is ignored).
    `max_bottlenecks` caps how many bottleneck values above the smallest feasible one are
    tried for a finite weight (None: all that can still win -- exact).
    """
    num_stages = len(costs)
    if num_stages == 0 or num_stages > num_layers:
        return None
    if max(c[1] for c in costs) == INF:
        return None
    if sum(_caps(costs, BIG, num_layers)) < num_layers:
        return None
    # Sum over stages of caps(beta) counts the (stage, n) entries <= beta, so the smallest
    # feasible bottleneck is the num_layers-th smallest entry (or some stage's first layer).
    merged = heapq.merge(*(c[1 : num_layers + 1] for c in costs))
    kth = next(itertools.islice(merged, num_layers - 1, None))
    start = max(kth, max(c[1] for c in costs), floor)  # below the floor, bottlenecks tie
    first = _min_sum(costs, _caps(costs, start, num_layers), num_layers)
    assert first is not None
    if weight == INF:
        return first
    best = first
    free = _min_sum(costs, _caps(costs, BIG, num_layers), num_layers)
    assert free is not None
    if free.objective(weight, floor) < best.objective(weight, floor):
        best = free
    tried = 0
    last = start
    for beta in merged:  # the remaining entries, increasing
        if beta <= last:
            continue
        last = beta
        if beta == INF or weight * beta + free.total_s >= best.objective(weight, floor):
            break
        if max_bottlenecks is not None and tried >= max_bottlenecks:
            break
        tried += 1
        cand = _min_sum(costs, _caps(costs, beta, num_layers), num_layers)
        if cand is not None and cand.objective(weight, floor) < best.objective(weight, floor):
            best = cand
    return best


# ---- batch -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchClass:
    """`count` identical replicas: `time_s(m)` seconds for m micro-batches of
    `micro_batch_size` sequences, m <= `max_micro_batches` (memory; None: unbounded)."""

    count: int
    micro_batch_size: int
    time_s: Callable[[int], float]
    max_micro_batches: int | None = None


def _most_micro_batches(cls: BatchClass, limit_s: float, cap: int) -> int:
    """Largest m <= cap with time_s(m) <= limit_s (0 if none)."""
    if cap < 1 or cls.time_s(1) > limit_s:
        return 0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cls.time_s(mid) <= limit_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _spread(bits: int, step: int, count: int, mask: int) -> int:
    """OR of bits << (step * i) for i in 0..count (doubling)."""
    acc, covered = bits, 1
    while covered <= count:
        take = min(covered, count + 1 - covered)
        acc = (acc | (acc << (step * take))) & mask
        covered += take
    return acc


def _exact_totals(ranges: list[tuple[int, int, int]], target: int) -> list[int] | None:
    """Pick n_i in [lo_i, hi_i] (micro-batches of size v_i) with sum v_i n_i = target."""
    if len(ranges) == 1:
        v, lo, hi = ranges[0]
        return [target // v] if target % v == 0 and lo <= target // v <= hi else None
    mask = (1 << (target + 1)) - 1
    layers = [1]
    for v, lo, hi in ranges:
        base = (layers[-1] << (v * lo)) & mask
        layers.append(_spread(base, v, hi - lo, mask))
    if not (layers[-1] >> target) & 1:
        return None
    picks = []
    rest = target
    for i in range(len(ranges) - 1, -1, -1):
        v, lo, hi = ranges[i]
        for n in range(lo, hi + 1):
            if rest - v * n >= 0 and (layers[i] >> (rest - v * n)) & 1:
                picks.append(n)
                rest -= v * n
                break
    picks.reverse()
    return picks


def _ranges(
    classes: Sequence[BatchClass], his: list[int]
) -> tuple[list[list[int]], list[tuple[int, int, int]]]:
    """Classes grouped by micro-batch size; per size (size, fewest, most) micro-batches."""
    by_size: dict[int, list[int]] = {}
    for i, c in enumerate(classes):
        by_size.setdefault(c.micro_batch_size, []).append(i)
    groups = [idx for _, idx in sorted(by_size.items())]
    ranges = [
        (
            classes[idx[0]].micro_batch_size,
            sum(classes[i].count for i in idx),
            sum(classes[i].count * his[i] for i in idx),
        )
        for idx in groups
    ]
    return groups, ranges


def split_batch(
    classes: Sequence[BatchClass], global_batch: int
) -> tuple[tuple[int, ...], ...] | None:
    """Micro-batches per replica (per class, a tuple over its replicas) minimising the
    slowest replica's time with sum(micro-batches x micro_batch_size) == global_batch and
    every replica at least one micro-batch; None if impossible (batch too small, or no
    combination of micro-batch sizes adds up to it)."""
    if not classes or sum(c.count * c.micro_batch_size for c in classes) > global_batch:
        return None
    caps = [
        min(c.max_micro_batches or global_batch, global_batch // c.micro_batch_size)
        for c in classes
    ]

    def assignment(limit_s: float) -> list[int] | None:
        his = [_most_micro_batches(c, limit_s, cap) for c, cap in zip(classes, caps, strict=True)]
        if min(his) < 1:
            return None
        if _exact_totals(_ranges(classes, his)[1], global_batch) is None:
            return None
        return his

    lo = max(c.time_s(1) for c in classes)
    if assignment(lo) is not None:
        hi = lo
    else:
        hi = max(c.time_s(cap) for c, cap in zip(classes, caps, strict=True))
        if assignment(hi) is None:
            return None
        for _ in range(200):  # bisection on the slowest replica's time
            mid = (lo + hi) / 2
            if mid <= lo or mid >= hi or hi - lo <= 1e-10 * hi:
                break
            if assignment(mid) is not None:
                hi = mid
            else:
                lo = mid
    his = assignment(hi)
    assert his is not None
    return _distribute(classes, his, global_batch)


def _distribute(
    classes: Sequence[BatchClass], his: list[int], global_batch: int
) -> tuple[tuple[int, ...], ...]:
    """Within the caps `his`, hand out micro-batches so the sum is exact, always to the
    replica whose next micro-batch finishes earliest (water-filling)."""
    groups, ranges = _ranges(classes, his)
    totals = _exact_totals(ranges, global_batch)
    assert totals is not None
    out: list[list[int]] = [[1] * c.count for c in classes]
    for idx, total in zip(groups, totals, strict=True):
        left = total - sum(classes[i].count for i in idx)
        heap = [
            (classes[i].time_s(2), i, r) for i in idx for r in range(classes[i].count) if his[i] > 1
        ]
        heapq.heapify(heap)
        while left > 0:
            _, i, r = heapq.heappop(heap)
            out[i][r] += 1
            left -= 1
            if out[i][r] < his[i]:
                heapq.heappush(heap, (classes[i].time_s(out[i][r] + 1), i, r))
    return tuple(tuple(x) for x in out)
