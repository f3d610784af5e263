"""Communication formulas, computed by hand."""

from __future__ import annotations

import pytest

from polychip.costmodel.comm import (
    bridge_time_s,
    hierarchical_allreduce_time_s,
    p2p_time_s,
    ring_allreduce_time_s,
)

GB = 1e9


def test_ring_allreduce_formula() -> None:
    # 2 (p - 1)/p x n / bw + 2 (p - 1) x latency: 8 ranks, 1 GB at 100 GB/s, 10 us.
    assert ring_allreduce_time_s(1 * GB, 8, 100 * GB, 10e-6) == pytest.approx(
        2 * 7 / 8 * 0.01 + 14 * 10e-6
    )
    # Two ranks each send and receive half the buffer twice: exactly n / bw of traffic.
    assert ring_allreduce_time_s(1 * GB, 2, 100 * GB, 0.0) == pytest.approx(0.01)


def test_ring_allreduce_tends_to_twice_n_over_bw() -> None:
    t = ring_allreduce_time_s(1 * GB, 10_000, 1 * GB, 0.0)
    assert t == pytest.approx(2.0, rel=1e-3)
    assert t < 2.0


@pytest.mark.parametrize(("n", "p"), [(0.0, 8), (1 * GB, 1), (1 * GB, 0)])
def test_ring_allreduce_degenerate_cases_are_free(n: float, p: int) -> None:
    assert ring_allreduce_time_s(n, p, 1 * GB, 1e-3) == 0.0


def test_p2p() -> None:
    assert p2p_time_s(50 * GB, 50 * GB, 2e-6) == pytest.approx(1 + 2e-6)
    assert p2p_time_s(0, 50 * GB, 2e-6) == 0.0


def test_bridge_adds_two_host_copies() -> None:
    n, net, host, lat = 1 * GB, 50 * GB, 25 * GB, 10e-6
    assert bridge_time_s(n, net, host, lat) == pytest.approx(n / net + 2 * n / host + lat)
    assert bridge_time_s(n, net, host, lat) > p2p_time_s(n, net, lat)
    assert bridge_time_s(0, net, host, lat) == 0.0


@pytest.mark.parametrize("p", [1, 2, 8, 64])
def test_hierarchical_with_one_island_is_a_ring(p: int) -> None:
    n, bw, lat = 3 * GB, 40 * GB, 7e-6
    ring = ring_allreduce_time_s(n, p, bw, lat)
    assert hierarchical_allreduce_time_s(n, [(p, bw, lat)], 1 * GB, 1 * GB, 1e-3) == ring


def test_hierarchical_two_islands_by_hand() -> None:
    n = 1 * GB
    islands = [(4, 100 * GB, 1e-6), (2, 50 * GB, 2e-6)]
    bridge, host, lat = 10 * GB, 25 * GB, 10e-6
    # Phase 1 + 3: reduce-scatter and all-gather inside each island, concurrently.
    inner = max(2 * 3 / 4 * n / (100 * GB) + 6 * 1e-6, 2 * 1 / 2 * n / (50 * GB) + 2 * 2e-6)
    # Phase 2: the shards (n / smallest island) all-reduced between k = 2 islands over the
    # bridge, each transfer also copied through both hosts.
    shard = n / 2
    cross = 2 * 1 / 2 * (shard / bridge + 2 * shard / host) + 2 * 1 * lat
    got = hierarchical_allreduce_time_s(n, islands, bridge, host, lat)
    assert got == pytest.approx(inner + cross)
    # Slower than either island's ring alone, faster than a flat ring over the bridge.
    flat = ring_allreduce_time_s(n, 6, 1 / (1 / bridge + 2 / host), lat)
    assert inner < got < flat


def test_hierarchical_no_islands_is_free() -> None:
    assert hierarchical_allreduce_time_s(1 * GB, [], 1 * GB, 1 * GB, 0.0) == 0.0
