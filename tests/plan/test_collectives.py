"""The one description of each collective: steps, groups, the bridge's pairing of shards,
what each rank owns and sends."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polychip.plan.collectives import BRIDGE, ISLAND, all_gather, allreduce, chunks, reduce_scatter

F = Fraction


def _islands(sizes: list[int]) -> list[list[int]]:
    out, rank = [], 0
    for p in sizes:
        out.append(list(range(rank, rank + p)))
        rank += p
    return out


def test_one_island_is_one_ring_and_one_rank_does_nothing() -> None:
    ring = allreduce([[3, 1, 2]])
    assert [(s.op, s.link, [g.ranks for g in s.groups]) for s in ring.steps] == [
        ("all_reduce", ISLAND, [(1, 2, 3)])]
    assert ring.sent_bytes(300.0) == {(r, ISLAND): 400.0 for r in (1, 2, 3)}  # 2 (p-1)/p n
    assert allreduce([[5]]).steps == ()
    assert allreduce([[5]]).owned(5) == ((F(0), F(1)),)


def test_equal_islands_pair_the_ith_rank_of_each() -> None:
    c = allreduce([[0, 1], [2, 3]])
    assert [s.op for s in c.steps] == ["reduce_scatter", "all_reduce", "all_gather"]
    bridge = c.steps[1]
    assert bridge.link == BRIDGE
    assert [(g.ranks, g.start, g.end) for g in bridge.groups] == [
        ((0, 2), F(0), F(1, 2)), ((1, 3), F(1, 2), F(1))]
    assert c.granularity == 2


def test_unequal_islands_every_rank_bridges_exactly_its_shard() -> None:
    c = allreduce([[0], [1, 2]])
    assert [(g.ranks, g.start, g.end) for g in c.steps[1].groups] == [
        ((0, 1), F(0), F(1, 2)), ((0, 2), F(1, 2), F(1))]
    sent = c.sent_bytes(600.0)
    # rank 0 holds the whole buffer as its shard and bridges all of it; 1 and 2 half each
    assert (sent[(0, BRIDGE)], sent[(1, BRIDGE)], sent[(2, BRIDGE)]) == (600.0, 300.0, 300.0)
    assert c.host_copy_bytes(600.0) == {0: 1200.0, 1: 600.0, 2: 600.0}
    assert (0, ISLAND) not in sent and sent[(1, ISLAND)] == 600.0  # RS + AG of 2


def test_zero1_halves_own_one_part_each_and_mirror_each_other() -> None:
    rs, ag = reduce_scatter([[0, 1], [2, 3]]), all_gather([[0, 1], [2, 3]])
    assert [s.op for s in rs.steps] == ["reduce_scatter", "reduce_scatter"]
    assert [s.op for s in ag.steps] == ["all_gather", "all_gather"]
    assert [s.link for s in ag.steps] == [BRIDGE, ISLAND]
    assert [rs.owned(r) for r in range(4)] == [
        ((F(0), F(1, 4)),), ((F(1, 2), F(3, 4)),), ((F(1, 4), F(1, 2)),), ((F(3, 4), F(1)),)]
    assert all(rs.owned(r) == ag.owned(r) for r in range(4))
    assert rs.granularity == 4
    one = reduce_scatter([[4, 5, 6]])
    assert one.owned(5) == ((F(1, 3), F(2, 3)),) and one.granularity == 3


@given(st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_properties_for_any_islands(sizes: list[int]) -> None:
    islands = _islands(sizes)
    ranks = [r for i in islands for r in i]
    cut = chunks(islands)
    assert cut[0].start == 0 and cut[-1].end == 1
    assert all(a.end == b.start for a, b in itertools.pairwise(cut))
    for g in cut:  # one owner per island, the owner of the shard the chunk lies in
        assert len(g.ranks) == len(islands)
        for isl in islands:
            (owner,) = [r for r in g.ranks if r in isl]
            i, p = isl.index(owner), len(isl)
            assert F(i, p) <= g.start and g.end <= F(i + 1, p)
    ar = allreduce(islands)
    if len(islands) > 1:
        sent = ar.sent_bytes(1.0)
        k = len(islands)
        for isl in islands:
            for r in isl:  # each rank bridges its own shard, 1/p of the buffer
                assert sent[(r, BRIDGE)] == pytest.approx(float(F(2 * (k - 1), k) / len(isl)))
    rs = reduce_scatter(islands)
    parts = sorted(p for r in ranks for p in rs.owned(r))
    assert parts[0][0] == 0 and parts[-1][1] == 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert all((b - a) * rs.granularity == int((b - a) * rs.granularity) for a, b in parts)
    if len(set(sizes)) == 1:
        assert {rs.owned_fraction(r) for r in ranks} == {F(1, len(ranks))}
    for step in (*ar.steps, *rs.steps, *all_gather(islands).steps):  # the priced floats
        assert step.figures == tuple((float(step.sent(g)), float(g.size), step.latencies(g))
                                     for g in step.groups)
