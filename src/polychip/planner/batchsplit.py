"""The batch split over replicas: a pure function over step-time functions -- no cluster,
no cost model -- tested against brute force on random inputs
(tests/planner/test_partition.py).

Replicas of a class are identical; replica `r` given `m` micro-batches of `micro_batch_size`
sequences takes `time_s(m)` seconds (non-decreasing). The split gives every replica at least
one micro-batch, makes the shares sum exactly to the global batch and minimises the slowest
replica's time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchClass:
    """`count` identical replicas: `time_s(m)` seconds for m micro-batches of
    `micro_batch_size` sequences, m <= `max_micro_batches` (memory; None: unbounded)."""

    count: int
    micro_batch_size: int
    time_s: Callable[[int], float]
    max_micro_batches: int | None = None


def _most_micro_batches(cls: BatchClass, limit_s: float, cap: int, least: int = 0) -> int:
    """Largest m <= cap with time_s(m) <= limit_s (0 if none); ``least``: known to be at
    most the answer (the answer at a lower limit)."""
    if least < 1 and (cap < 1 or cls.time_s(1) > limit_s):
        return 0
    lo, hi = max(least, 1), cap
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


def _reachable(ranges: list[tuple[int, int, int]], target: int) -> list[int] | None:
    """The sums reachable after each range (bitsets; bit t: sum t) if ``target`` is
    reachable with n_i in [lo_i, hi_i] micro-batches of size v_i, else None."""
    mask = (1 << (target + 1)) - 1
    layers = [1]
    for v, lo, hi in ranges:
        base = (layers[-1] << (v * lo)) & mask
        layers.append(_spread(base, v, hi - lo, mask))
    return layers if (layers[-1] >> target) & 1 else None


def _feasible(ranges: list[tuple[int, int, int]], target: int) -> bool:
    if len(ranges) == 1:
        v, lo, hi = ranges[0]
        return target % v == 0 and lo <= target // v <= hi
    return _reachable(ranges, target) is not None


def _exact_totals(ranges: list[tuple[int, int, int]], target: int) -> list[int] | None:
    """Pick n_i in [lo_i, hi_i] (micro-batches of size v_i) with sum v_i n_i = target: from
    the last range back, the fewest micro-batches that leave a reachable rest."""
    if len(ranges) == 1:
        v, lo, hi = ranges[0]
        return [target // v] if target % v == 0 and lo <= target // v <= hi else None
    layers = _reachable(ranges, target)
    if layers is None:
        return None
    picks = []
    rest = target
    for i in range(len(ranges) - 1, -1, -1):
        v, lo, hi = ranges[i]
        hi = min(hi, rest // v)  # the sums rest - v n, n = lo..hi, at a stride of v
        bottom, count = rest - v * hi, hi - lo + 1
        window = (layers[i] >> bottom) & _spread(1, v, count - 1, (1 << (v * count)) - 1)
        n = hi - (window.bit_length() - 1) // v  # the highest reachable sum: the fewest n
        picks.append(n)
        rest -= v * n
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

    feasible: dict[tuple[int, ...], bool] = {}  # the bisection meets few distinct counts

    def assignment(limit_s: float, least: list[int], most: list[int]) -> list[int]:
        """Per class the most micro-batches within ``limit_s`` (between the counts at a
        lower and a higher limit)."""
        return [_most_micro_batches(c, limit_s, m, a)
                for c, a, m in zip(classes, least, most, strict=True)]

    def fits(his: list[int]) -> bool:
        key = tuple(his)
        if key not in feasible:
            feasible[key] = min(his) >= 1 and _feasible(_ranges(classes, his)[1], global_batch)
        return feasible[key]

    lo = max(c.time_s(1) for c in classes)
    his_lo = assignment(lo, [0] * len(classes), caps)
    if fits(his_lo):
        his = his_lo
    else:
        hi = max(c.time_s(cap) for c, cap in zip(classes, caps, strict=True))
        his = assignment(hi, his_lo, caps)
        if not fits(his):
            return None
        for _ in range(200):  # bisection on the slowest replica's time
            mid = (lo + hi) / 2
            if mid <= lo or mid >= hi or hi - lo <= 1e-10 * hi:
                break
            his_mid = assignment(mid, his_lo, his)
            if fits(his_mid):
                hi, his = mid, his_mid
            else:
                lo, his_lo = mid, his_mid
    return _distribute(classes, his, global_batch)


def _distribute(
    classes: Sequence[BatchClass], his: list[int], global_batch: int
) -> tuple[tuple[int, ...], ...]:
    """Within the caps `his`, hand out micro-batches so the sum is exact, always to the
    replica whose next micro-batch finishes earliest (water-filling; ties to the lower
    class, then the lower replica)."""
    groups, ranges = _ranges(classes, his)
    totals = _exact_totals(ranges, global_batch)
    assert totals is not None
    out: list[tuple[int, ...]] = [(1,) * c.count for c in classes]
    for idx, total in zip(groups, totals, strict=True):
        left = total - sum(classes[i].count for i in idx)
        if left > 0:
            for i, counts in _water_fill([classes[i] for i in idx], [his[i] for i in idx],
                                         left).items():
                out[idx[i]] = counts
    return tuple(out)


def _water_fill(classes: Sequence[BatchClass], his: Sequence[int], left: int
                ) -> dict[int, tuple[int, ...]]:
    """`left` micro-batches beyond one per replica, to the earliest next finish, as a heap
    of every replica would hand them out -- but per class (its replicas are identical):
    the `left`-th earliest next finish T is found by bisection; every replica takes each
    micro-batch finishing before T, and those finishing at T go in (class, replica) order,
    a replica taking all of its own before the next (the heap's order on ties)."""

    def below(c: int, t: float, strict: bool) -> int:
        """Micro-batches 2..his[c] of one replica of class c finishing before t (or at)."""
        lo, hi = 1, his[c]  # the last m with time_s(m) < t (<= t), at least 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            tm = classes[c].time_s(mid)
            if tm < t or (not strict and tm == t):
                lo = mid
            else:
                hi = mid - 1
        return lo - 1

    def taken(t: float, strict: bool) -> int:
        return sum(cls.count * below(c, t, strict) for c, cls in enumerate(classes))

    def smallest_reaching(c: int) -> float | None:
        """The earliest finish of class c at or below which `left` micro-batches finish."""
        lo, hi = 2, his[c]
        if hi < 2 or taken(classes[c].time_s(hi), False) < left:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if taken(classes[c].time_s(mid), False) >= left:
                hi = mid
            else:
                lo = mid + 1
        return classes[c].time_s(lo)

    t = min(x for c in range(len(classes)) if (x := smallest_reaching(c)) is not None)
    rest = left - taken(t, True)
    out = {}
    for c, cls in enumerate(classes):
        base, ties = 1 + below(c, t, True), below(c, t, False) - below(c, t, True)
        counts = []
        for _ in range(cls.count):
            extra = min(ties, rest)
            rest -= extra
            counts.append(base + extra)
        out[c] = tuple(counts)
    return out
