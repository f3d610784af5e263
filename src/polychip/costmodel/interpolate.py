"""Reading a measured figure between measured points: piecewise linear, never beyond them.

Compute points (a block, the embedding, the head) are interpolated linearly in tokens per
micro-batch (`b · s`), among points of the query's sequence length when the profile has
any that bracket it (attention's cost per token grows with `s`), else among all points;
across TP degrees, linearly in `1/t` (the per-chip share of the work) between the nearest
measured degrees on either side. Link points are interpolated linearly in message bytes.
Outside the measured range every function returns None: the cost model then uses its
analytic figure (docs/cost-model.md, "Measured profiles"), never an extrapolation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from polychip.spec.profile import PassPoint

Vector = tuple[float | None, ...]  # None: a figure the point does not have
REL_TOL = 1e-9  # a query this close to a measured abscissa is at it


def _lerp(x: float, x0: float, x1: float, v0: Vector, v1: Vector) -> Vector:
    w = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
    return tuple(None if a is None or b is None else a + w * (b - a)
                 for a, b in zip(v0, v1, strict=True))


def along(points: Sequence[tuple[float, Vector]], x: float) -> Vector | None:
    """The piecewise-linear function through `points` ((abscissa, values); points at one
    abscissa are averaged) at `x`, or None when `x` is outside the measured abscissae."""
    by_x: dict[float, list[Vector]] = {}
    for px, v in points:
        by_x.setdefault(px, []).append(v)
    xs = sorted(by_x)
    if not xs:
        return None
    tol = REL_TOL * max(abs(xs[-1]), 1.0)
    if x < xs[0] - tol or x > xs[-1] + tol:
        return None
    mean = {px: _mean(vs) for px, vs in by_x.items()}
    if len(xs) == 1 or x <= xs[0]:
        return mean[xs[0]]
    for x0, x1 in itertools.pairwise(xs):
        if x <= x1:
            return _lerp(x, x0, x1, mean[x0], mean[x1])
    return mean[xs[-1]]


def _mean(vectors: list[Vector]) -> Vector:
    return tuple(None if any(v is None for v in col) else sum(col) / len(col)  # type: ignore[misc]
                 for col in zip(*vectors, strict=True))


class _Point(Protocol):
    @property
    def tokens(self) -> int: ...

    @property
    def seq_len(self) -> int: ...


P = TypeVar("P", bound=_Point)


def at_tokens(points: Sequence[P], tokens: int, seq_len: int,
              values: Callable[[P], Vector]) -> Vector | None:
    """`values` at `tokens` per micro-batch: linear in tokens among the points of `seq_len`
    when they bracket it, else among all points; None outside them."""
    same = [(float(p.tokens), values(p)) for p in points if p.seq_len == seq_len]
    hit = along(same, tokens)
    if hit is None:
        hit = along([(float(p.tokens), values(p)) for p in points], tokens)
    return hit


def at_point(points: Sequence[PassPoint], tp: int, micro_batch: int, seq_len: int,
             values: Callable[[PassPoint], Vector]) -> Vector | None:
    """`values` of the measured part at (tp, micro_batch, seq_len), interpolated in tokens
    and in 1/tp; None outside the measured points."""
    tokens = micro_batch * seq_len
    degrees = sorted({p.tp for p in points})
    if tp in degrees:
        return at_tokens([p for p in points if p.tp == tp], tokens, seq_len, values)
    below = [d for d in degrees if d < tp]
    above = [d for d in degrees if d > tp]
    if not below or not above:
        return None
    lo, hi = below[-1], above[0]
    v_lo = at_tokens([p for p in points if p.tp == lo], tokens, seq_len, values)
    v_hi = at_tokens([p for p in points if p.tp == hi], tokens, seq_len, values)
    if v_lo is None or v_hi is None:
        return None
    return _lerp(1.0 / tp, 1.0 / lo, 1.0 / hi, v_lo, v_hi)


def hockney_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(bandwidth bytes/s, latency s) of `t = latency + n / bandwidth` fitted by least
    squares to (bytes, seconds) points (Hockney's model); the latency is at least 0. None
    with fewer than two distinct sizes or a slope that is not positive."""
    sizes = {n for n, _ in points}
    if len(sizes) < 2:
        return None
    k = len(points)
    mean_n = sum(n for n, _ in points) / k
    mean_t = sum(t for _, t in points) / k
    var = sum((n - mean_n) ** 2 for n, _ in points)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in points) / var
    latency = mean_t - slope * mean_n
    if latency < 0:  # refit through the origin: no negative start-up time
        latency = 0.0
        slope = sum(n * t for n, t in points) / sum(n * n for n, _ in points)
    if slope <= 0:
        return None
    return 1.0 / slope, latency
