"""The pure splitters against brute force on random inputs."""

from __future__ import annotations

import heapq
import itertools
import math
import random

import pytest

from polychip.planner.batchsplit import (
    BatchClass,
    _distribute,
    _exact_totals,
    _ranges,
    split_batch,
)
from polychip.planner.layersplit import INF, _min_sum, split_layers


def _compositions(total: int, parts: int):
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def _random_costs(rng: random.Random, stages: int, layers: int) -> list[list[float]]:
    costs = []
    for _ in range(stages):
        per = rng.choice([1.0, 1.5, 2.0, 3.0, 0.7]) * rng.uniform(0.9, 1.1)
        extra = rng.choice([0.0, 0.0, 0.5, 2.0])
        recompute_from = rng.choice([layers + 1, rng.randint(1, layers)])
        cap = rng.choice([layers, layers, rng.randint(1, layers)])
        row = [0.0]
        for n in range(1, layers + 1):
            c = extra + n * per * (1.33 if n >= recompute_from else 1.0)
            row.append(c if n <= cap else INF)
        for n in range(2, layers + 1):  # keep it non-decreasing
            row[n] = max(row[n], row[n - 1])
        costs.append(row)
    return costs


def _brute(costs, layers, weight, floor, window=None):
    best = None
    for comp in _compositions(layers, len(costs)):
        cs = [costs[s][n] for s, n in enumerate(comp)]
        if max(cs) == INF:
            continue
        beat = max(floor, max(cs))
        if window is not None:  # 1F1B: the first stage's window of S micro-batches
            beat = max(beat, (math.fsum(cs) + window) / len(cs))
        key = (beat, math.fsum(cs)) if weight == INF else (weight * beat + math.fsum(cs),)
        if best is None or key < best:
            best = key
    return best


@pytest.mark.parametrize("seed", range(120))
def test_split_layers_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    layers = rng.randint(1, 9)
    stages = rng.randint(1, min(layers, 4) + 1)
    costs = _random_costs(rng, stages, layers)
    weight = rng.choice([INF, 0.0, 1.0, 3.0, 15.0])
    floor = rng.choice([0.0, 0.0, 4.0])
    window = rng.choice([None, None, 0.0, 2.0, 12.0])
    got = split_layers(costs, layers, weight=weight, floor=floor, window=window)
    want = _brute(costs, layers, weight, floor, window)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert sum(got.layers) == layers and min(got.layers) >= 1
    cs = [costs[s][n] for s, n in enumerate(got.layers)]
    assert got.bottleneck_s == max(cs)
    if weight == INF:
        assert got.beat_s(floor, window) == pytest.approx(want[0])
        assert got.total_s == pytest.approx(want[1])
    else:
        assert got.objective(weight, floor, window) == pytest.approx(want[0])


def _brute_batch(classes, global_batch):
    replicas = [c for c in classes for _ in range(c.count)]
    best = None
    ranges = [
        range(1, min(c.max_micro_batches or global_batch, global_batch // c.micro_batch_size) + 1)
        for c in replicas
    ]
    for ms in itertools.product(*ranges):
        if sum(m * c.micro_batch_size for m, c in zip(ms, replicas, strict=True)) != global_batch:
            continue
        t = max(c.time_s(m) for m, c in zip(ms, replicas, strict=True))
        best = t if best is None else min(best, t)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_split_batch_matches_brute_force(seed: int) -> None:
    rng = random.Random(1000 + seed)
    classes = []
    for _ in range(rng.randint(1, 3)):
        fill, beat = rng.uniform(1, 5), rng.uniform(0.2, 2)
        classes.append(
            BatchClass(
                count=rng.randint(1, 2),
                micro_batch_size=rng.choice([1, 1, 2, 4]),
                time_s=lambda m, f=fill, b=beat: f + (m - 1) * b,
                max_micro_batches=rng.choice([None, None, rng.randint(1, 6)]),
            )
        )
    global_batch = rng.randint(1, 14)
    got = split_batch(classes, global_batch)
    want = _brute_batch(classes, global_batch)
    if want is None:
        assert got is None
        return
    assert got is not None
    total = sum(m * c.micro_batch_size for c, ms in zip(classes, got, strict=True) for m in ms)
    assert total == global_batch
    for c, ms in zip(classes, got, strict=True):
        assert len(ms) == c.count and min(ms) >= 1
        assert c.max_micro_batches is None or max(ms) <= c.max_micro_batches
    worst = max(c.time_s(m) for c, ms in zip(classes, got, strict=True) for m in ms)
    assert worst == pytest.approx(want, rel=1e-9)


def test_split_batch_too_small() -> None:
    cls = BatchClass(count=4, micro_batch_size=1, time_s=lambda m: float(m))
    assert split_batch([cls], 3) is None
    assert split_batch([cls], 4) == ((1, 1, 1, 1),)


@pytest.mark.parametrize("seed", range(20))
def test_upper_envelope_is_the_max_of_lines(seed: int) -> None:
    from polychip.planner.exhaustive import upper_envelope

    rng = random.Random(seed)
    lines = [(rng.uniform(0, 3), rng.uniform(-5, 5)) for _ in range(rng.randint(1, 12))]
    env = upper_envelope(lines)
    for _ in range(50):
        t = rng.uniform(0, 20)
        assert env(t) == pytest.approx(max(a * t + b for a, b in lines))


def _heap_distribute(classes, his, global_batch):
    """The water-filling as a heap of every replica hands it out (the reference)."""
    groups, ranges = _ranges(classes, his)
    totals = _exact_totals(ranges, global_batch)
    out = [[1] * c.count for c in classes]
    for idx, total in zip(groups, totals, strict=True):
        left = total - sum(classes[i].count for i in idx)
        heap = [(classes[i].time_s(2), i, r) for i in idx for r in range(classes[i].count)
                if his[i] > 1]
        heapq.heapify(heap)
        while left > 0:
            _, i, r = heapq.heappop(heap)
            out[i][r] += 1
            left -= 1
            if out[i][r] < his[i]:
                heapq.heappush(heap, (classes[i].time_s(out[i][r] + 1), i, r))
    return tuple(tuple(x) for x in out)


@pytest.mark.parametrize("seed", range(200))
def test_water_filling_per_class_equals_the_heap_over_replicas(seed: int) -> None:
    """Ties included: integer times shared between classes, and flat stretches inside one
    (a pipeline whose first micro-batches cost no more than its fill)."""
    rng = random.Random(5000 + seed)
    classes, his = [], []
    for _ in range(rng.randint(1, 4)):
        fill, beat, flat = rng.randint(1, 6), rng.randint(0, 3), rng.randint(1, 4)
        classes.append(BatchClass(
            count=rng.randint(1, 5), micro_batch_size=rng.choice([1, 1, 2]),
            time_s=lambda m, f=fill, b=beat, k=flat: float(f + max(0, m - k) * b)))
        his.append(rng.randint(1, 9))
    global_batch = rng.randint(1, sum(c.count * h * c.micro_batch_size
                                      for c, h in zip(classes, his, strict=True)))
    if _exact_totals(_ranges(classes, his)[1], global_batch) is None:
        return
    assert _distribute(classes, his, global_batch) == _heap_distribute(classes, his,
                                                                        global_batch)


def _loop_totals(ranges, target):
    """The reachable sums by brute force, picks by a loop over counts (the reference)."""
    reach = [{0}]
    for v, lo, hi in ranges:
        reach.append({t + v * n for t in reach[-1] for n in range(lo, hi + 1)
                      if t + v * n <= target})
    if target not in reach[-1]:
        return None
    picks, rest = [], target
    for i in range(len(ranges) - 1, -1, -1):
        v, lo, hi = ranges[i]
        n = next(n for n in range(lo, hi + 1) if rest - v * n in reach[i])
        picks.append(n)
        rest -= v * n
    return picks[::-1]


@pytest.mark.parametrize("seed", range(300))
def test_exact_totals_picks_the_fewest_micro_batches_from_the_last_size(seed: int) -> None:
    rng = random.Random(9000 + seed)
    ranges = []
    for v in sorted(rng.sample([1, 2, 4, 8], rng.randint(1, 4))):
        lo = rng.randint(0, 6)
        ranges.append((v, lo, lo + rng.randint(0, 12)))
    target = rng.randint(0, sum(v * hi for v, _, hi in ranges))
    assert _exact_totals(ranges, target) == _loop_totals(ranges, target)


@pytest.mark.parametrize("seed", range(60))
def test_least_sum_under_caps_matches_brute_force(seed: int) -> None:
    """`_min_sum`: the least total with 1 <= n_s <= caps[s]; with no slack (the caps sum to
    the layers) the caps themselves, the only split."""
    rng = random.Random(seed)
    layers = rng.randint(1, 9)
    stages = rng.randint(1, min(layers, 4))
    costs = _random_costs(rng, stages, layers)
    caps = [rng.randint(1, layers) for _ in range(stages)]
    if seed % 3 == 0 and sum(caps) >= layers:  # no slack: take caps down to the layers
        while sum(caps) > layers:
            i = rng.randrange(stages)
            caps[i] = max(1, caps[i] - 1)
    fits = [comp for comp in _compositions(layers, stages)
            if all(n <= c and costs[s][n] < INF
                   for s, (n, c) in enumerate(zip(comp, caps, strict=True)))]
    caps = [min(c, max(n for n in range(layers + 1) if costs[s][n] < INF))
            for s, c in enumerate(caps)]
    got = _min_sum(costs, caps, layers)
    if not fits:
        assert got is None
        return
    assert got is not None
    assert got.total_s == pytest.approx(min(math.fsum(costs[s][n] for s, n in enumerate(c))
                                            for c in fits))
    if sum(caps) == layers:
        assert got.layers == tuple(caps)
