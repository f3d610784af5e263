"""The pure splitters against brute force on random inputs."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from polychip.planner.batchsplit import BatchClass, split_batch
from polychip.planner.layersplit import INF, split_layers


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
