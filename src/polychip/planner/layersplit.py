"""The layer split of one pipeline (AMP / Alpa style): a pure function over cost arrays --
no cluster, no cost model -- tested against brute force on random inputs
(tests/planner/test_partition.py).

Stage `s` holding `n` layers costs `costs[s][n]` seconds per micro-batch (`inf` where it
does not fit memory), non-decreasing in `n`. A pipeline with `m` micro-batches takes
`fixed + sum(stage costs) + (m - 1) * beat` (the cost model's closed form,
costmodel/pipeline.py) with `beat = max(floor, max stage cost)` under GPipe and, under 1F1B
once `m - 1 >= S` (the caller passes `window` then: the links' round trip), also at least
the first stage's window `(sum + window) / S` (the windows of shorter runs of stages are
left to the exact score). The split minimises `weight * beat + sum` with `weight = m - 1`;
`weight = inf` minimises the beat first, then the sum (the steady state of many
micro-batches).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

INF = math.inf
BIG = 1.0e308  # above every finite cost, below INF


@dataclass(frozen=True)
class LayerSplit:
    layers: tuple[int, ...]  # layers per stage, each >= 1, summing to the model's layers
    bottleneck_s: float  # the slowest stage's cost
    total_s: float  # the sum of the stage costs

    def beat_s(self, floor: float = 0.0, window: float | None = None) -> float:
        """The steady-state beat: `max(floor, bottleneck)`, and under 1F1B (`window`: the
        links' round trip) at least the first stage's window `(total + window) / S`."""
        beat = max(floor, self.bottleneck_s)
        if window is not None:
            beat = max(beat, (self.total_s + window) / len(self.layers))
        return beat

    def objective(self, weight: float, floor: float = 0.0, window: float | None = None) -> float:
        return weight * self.beat_s(floor, window) + self.total_s

    def key(self, weight: float, floor: float, window: float | None) -> tuple[float, ...]:
        """What the split minimises (`weight = inf`: the beat, then the sum)."""
        if weight == INF:
            return (self.beat_s(floor, window), self.total_s)
        return (self.objective(weight, floor, window),)


def _caps(costs: Sequence[Sequence[float]], beta: float, num_layers: int) -> list[int]:
    """Per stage, the most layers whose cost stays <= beta (0: not even one)."""
    return [bisect_right(c, beta, 1, num_layers + 1) - 1 for c in costs]


def _kth_entry(costs: Sequence[Sequence[float]], num_layers: int) -> float:
    """The num_layers-th smallest of the entries costs[s][1..num_layers]. Every row holds
    at least ceil(L / S) entries <= the largest of their ceil(L / S)-th, so the L smallest
    are among the entries up to it: only those are sorted."""
    per = -(-num_layers // len(costs))
    most = max(c[per] for c in costs)
    small = sorted(itertools.chain.from_iterable(
        c[1 : bisect_right(c, most, 1, num_layers + 1)] for c in costs))
    return small[num_layers - 1]


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
    if suffix[0] == num_layers:  # no slack: every stage at its cap is the only split
        return _of(costs, tuple(caps))
    # best[j - lo]: least cost of the stages so far holding j layers (INF: impossible), over
    # the window of j the caps allow -- j ascending: the first least total found wins ties,
    # as it always did; lists of the window, not of every count (the search's hottest loop)
    best, lo = [0.0], 0
    choices: list[tuple[int, list[int]]] = []  # per stage: (its window's lo, layers it took)
    for s in range(num_stages):
        most = num_layers - (num_stages - s - 1)  # leave one layer for each later stage
        least = num_layers - suffix[s + 1]  # later stages cannot take more than their caps
        row, cap = costs[s], caps[s]
        nlo = lo + 1 if lo + 1 > least else least
        nhi = lo + len(best) - 1 + cap
        nhi = nhi if nhi < most else most
        if nhi < nlo:
            return None
        nxt = [INF] * (nhi - nlo + 1)
        arg = [0] * (nhi - nlo + 1)
        for j, v in enumerate(best, lo):
            if v == INF:
                continue
            a = least - j if least - j > 1 else 1  # this stage takes n = a..b layers
            b = most - j if most - j < cap else cap
            k = j + a - nlo
            for n, x in enumerate(row[a : b + 1], a):
                w = v + x
                if w < nxt[k]:
                    nxt[k] = w
                    arg[k] = n
                k += 1
        choices.append((nlo, arg))
        best, lo = nxt, nlo
    if not lo <= num_layers < lo + len(best) or best[num_layers - lo] == INF:
        return None
    layers = []
    j = num_layers
    for s in range(num_stages - 1, -1, -1):
        base, arg = choices[s]
        n = arg[j - base]
        layers.append(n)
        j -= n
    layers.reverse()
    return _of(costs, tuple(layers))


def _of(costs: Sequence[Sequence[float]], layers: tuple[int, ...]) -> LayerSplit:
    stage_costs = [costs[s][n] for s, n in enumerate(layers)]
    return LayerSplit(layers, max(stage_costs), math.fsum(stage_costs))


def split_layers(
    costs: Sequence[Sequence[float]],
    num_layers: int,
    *,
    weight: float = INF,
    floor: float = 0.0,
    window: float | None = None,
    max_bottlenecks: int | None = None,
) -> LayerSplit | None:
    """The split of `num_layers` identical layers over `len(costs)` stages minimising
    `weight * beat + sum` (module docstring); None if nothing fits.

    `costs[s]` has `num_layers + 1` entries (index = layers held; index 0 is ignored).
    `max_bottlenecks` caps how many bottleneck values above the smallest feasible one are
    tried for a finite weight (None: all that can still win -- exact).
    """
    num_stages = len(costs)
    if num_stages == 0 or num_stages > num_layers:
        return None
    one = max(c[1] for c in costs)  # the dearest stage holding one layer
    loose = _caps(costs, BIG, num_layers)  # every finite entry
    if one == INF or sum(loose) < num_layers:
        return None
    # Sum over stages of caps(beta) counts the (stage, n) entries <= beta, so the smallest
    # feasible bottleneck is the num_layers-th smallest entry (or some stage's first layer).
    start = max(_kth_entry(costs, num_layers), one, floor)  # below the floor, bottlenecks tie
    first = _min_sum(costs, _caps(costs, start, num_layers), num_layers)
    assert first is not None
    if weight == INF and first.beat_s(floor, window) == max(floor, first.bottleneck_s):
        return first  # the least bottleneck, and its window does not bind
    free = _min_sum(costs, loose, num_layers)
    assert free is not None
    # No split has a beat below `least` nor a sum below free's: if free's beat is `least`,
    # free is optimal for every weight.
    least = start if window is None else max(start, (free.total_s + window) / num_stages)
    if free.beat_s(floor, window) <= least:
        return free
    best = min((first, free), key=lambda c: c.key(weight, floor, window))
    entries = sorted(itertools.chain.from_iterable(c[1 : num_layers + 1] for c in costs))
    tried = 0
    last = start
    for beta in entries[num_layers:]:  # the remaining entries, increasing
        if beta <= last:
            continue
        last = beta
        # a split with bottleneck >= beta has beat >= beta and sum >= the least sum
        bound = (beta, free.total_s) if weight == INF else (weight * beta + free.total_s,)
        if beta == INF or bound >= best.key(weight, floor, window):
            break
        if max_bottlenecks is not None and tried >= max_bottlenecks:
            break
        tried += 1
        cand = _min_sum(costs, _caps(costs, beta, num_layers), num_layers)
        if cand is not None and cand.key(weight, floor, window) < best.key(weight, floor, window):
            best = cand
    return best
