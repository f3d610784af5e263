"""One description of each collective: its steps, the groups of each step, the part of the
buffer each group works on, and so the bytes every rank sends over each kind of link.

The cost model prices a description (`costmodel/gradsync.py`), the simulator replays it
(`simulator/collectives.py`), the runtime executes it (`runtime/grads.py`), so the three
cannot drift apart. A description names ranks, not devices: whoever uses it knows where
each rank sits.

**All-reduce across islands** (ranks grouped by island: one vendor's collective library
each; islands of one rank included):

1. *reduce-scatter* inside each island (ring): the i-th rank of an island of p (ranks in
   ascending order) ends with shard i -- the i-th 1/p of the buffer -- summed over its island;
2. *bridge*: every rank combines its own shard with the ranks of the other islands that own
   the same bytes, through host memory, all in parallel. Shards pair up by position: the
   buffer is cut at every island's shard boundaries (the multiples of 1/p of each island);
   each piece between two cuts, a *chunk*, lies inside exactly one shard of every island and
   is all-reduced among those shards' owners, one rank per island. Equal islands of p ranks:
   chunk i is shard i, bridged by the i-th rank of every island. Unequal islands, say {a} and
   {b0, b1}: a (whose shard is the whole buffer) bridges the first half with b0 and the
   second with b1, so each rank sends exactly its own shard -- never a leader the whole buffer;
3. *all-gather* inside each island.

One island: a ring all-reduce. **ZeRO-1** splits it in two halves around the optimizer step:
`reduce_scatter` (steps 1 and 2, the bridge *reduce-scattering* each chunk among its owners,
part j to the j-th), after which each rank owns 1/k of every chunk of its shard (1/R of the
buffer when the R ranks form islands of equal size; more on the ranks of a smaller island),
and `all_gather`, the same steps in reverse, for the updated parameters.

Bytes are those of the ring algorithm (Patarasuk & Yuan 2009): in a group of p ranks working
on s bytes, each rank sends (p - 1)/p x s for a reduce-scatter or an all-gather and twice
that for an all-reduce; a bridge also copies each rank's chunk to host memory and back.
Parts are exact fractions of the buffer; a runtime buffer whose length is a multiple of
`granularity` splits into whole elements everywhere.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Op = Literal["all_reduce", "reduce_scatter", "all_gather"]
Kind = Literal["all-reduce", "reduce-scatter", "all-gather"]
Link = Literal["island", "bridge"]
ISLAND: Link = "island"
BRIDGE: Link = "bridge"
Part = tuple[Fraction, Fraction]
_HALF: dict[Kind, Op] = {"reduce-scatter": "reduce_scatter", "all-gather": "all_gather"}


@dataclass(frozen=True)
class Group:
    """Ranks (ascending) working together on the part [start, end) of the buffer."""

    ranks: tuple[int, ...]
    start: Fraction
    end: Fraction

    @property
    def size(self) -> Fraction:
        return self.end - self.start

    def part_of(self, rank: int) -> Part:
        """The rank's part of a reduce-scatter's result (or all-gather's input)."""
        i, p = self.ranks.index(rank), len(self.ranks)
        return (self.start + self.size * i / p, self.start + self.size * (i + 1) / p)


@dataclass(frozen=True)
class Step:
    """One collective call per group, the groups running side by side."""

    op: Op
    link: Link
    groups: tuple[Group, ...]

    def sent(self, group: Group) -> Fraction:
        """What each rank of ``group`` sends, as a fraction of the buffer (ring)."""
        p = len(group.ranks)
        return Fraction(2 if self.op == "all_reduce" else 1) * Fraction(p - 1, p) * group.size

    def latencies(self, group: Group) -> int:
        """Ring steps, each paying the link's latency once."""
        p = len(group.ranks)
        return (2 if self.op == "all_reduce" else 1) * (p - 1)

    @functools.cached_property
    def figures(self) -> tuple[tuple[float, float, int], ...]:
        """Per group, in floats for pricing: (what each rank sends, the group's part of the
        buffer, ring latencies) -- `sent`, `size`, `latencies` (descriptions are cached, so
        a cost model pricing thousands of plans computes these once)."""
        factor = 2 if self.op == "all_reduce" else 1
        out = []
        for g in self.groups:  # `sent` in one fraction: the same rational, far faster
            p, size = len(g.ranks), g.size
            sent = Fraction(factor * (p - 1) * size.numerator, p * size.denominator)
            out.append((float(sent), float(size), self.latencies(g)))
        return tuple(out)


@dataclass(frozen=True)
class Collective:
    kind: Kind
    islands: tuple[tuple[int, ...], ...]  # ascending ranks, islands by their lowest rank
    steps: tuple[Step, ...]
    granularity: int  # a buffer of a multiple of this many elements splits exactly

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted(r for island in self.islands for r in island))

    def groups_of(self, rank: int) -> list[tuple[int, Group]]:
        """(step index, group) of every call ``rank`` makes, in order."""
        return [(i, g) for i, s in enumerate(self.steps) for g in s.groups if rank in g.ranks]

    def owned(self, rank: int) -> tuple[Part, ...]:
        """The parts ``rank`` holds, fully combined, after a reduce-scatter (or contributes
        to an all-gather); every part of the buffer for an all-reduce."""
        if self.kind == "all-reduce" or not self.steps:
            return ((Fraction(0), Fraction(1)),)
        last = self.steps[-1] if self.kind == "reduce-scatter" else self.steps[0]
        return tuple(g.part_of(rank) for g in last.groups if rank in g.ranks)

    def owned_fraction(self, rank: int) -> Fraction:
        return sum((b - a for a, b in self.owned(rank)), Fraction(0))

    def sent_bytes(self, n_bytes: float) -> dict[tuple[int, Link], float]:
        """(rank, link) -> bytes that rank sends over that kind of link, for a buffer of
        ``n_bytes``."""
        out: dict[tuple[int, Link], float] = {}
        for step in self.steps:
            for g in step.groups:
                for r in g.ranks:
                    key = (r, step.link)
                    out[key] = out.get(key, 0.0) + float(step.sent(g)) * n_bytes
        return out

    def host_copy_bytes(self, n_bytes: float) -> dict[int, float]:
        """rank -> bytes it copies between device and host memory for the bridge (its
        chunks out and back in)."""
        out: dict[int, float] = {}
        for step in self.steps:
            if step.link == BRIDGE:
                for g in step.groups:
                    for r in g.ranks:
                        out[r] = out.get(r, 0.0) + 2 * float(g.size) * n_bytes
        return out


def _islands(islands: Iterable[Iterable[int]]) -> tuple[tuple[int, ...], ...]:
    out = sorted((tuple(sorted(i)) for i in islands if i), key=lambda i: i[0])
    seen = [r for i in out for r in i]
    assert len(seen) == len(set(seen)), f"a rank in two islands: {out}"
    return tuple(out)


def chunks(islands: Sequence[Sequence[int]]) -> list[Group]:
    """The bridge's pairing: the buffer cut at every island's shard boundaries, each chunk
    with the owner of its shard in every island."""
    whole = math.lcm(*(len(i) for i in islands))  # cuts in units of 1 / whole: integers
    step = [whole // len(i) for i in islands]
    cuts = sorted({j * s for i, s in zip(islands, step, strict=True) for j in range(len(i) + 1)})
    return [
        Group(tuple(sorted(i[a // s] for i, s in zip(islands, step, strict=True))),
              Fraction(a, whole), Fraction(b, whole))
        for a, b in itertools.pairwise(cuts)
    ]


def _inside(op: Op, islands: Sequence[Sequence[int]]) -> Step:
    whole = (Fraction(0), Fraction(1))
    return Step(op, ISLAND, tuple(Group(i, *whole) for i in islands if len(i) > 1))


def _build(kind: Kind, islands: Iterable[Iterable[int]]) -> Collective:
    isl = _islands(islands)
    base = math.lcm(*(len(i) for i in isl)) if isl else 1
    k = len(isl)
    if k <= 1:
        op: Op = "all_reduce" if kind == "all-reduce" else _HALF[kind]
        steps = (_inside(op, isl),) if isl and len(isl[0]) > 1 else ()
        return Collective(kind, isl, steps, base)
    bridge = tuple(chunks(isl))
    if kind == "all-reduce":
        steps = (
            _inside("reduce_scatter", isl),
            Step("all_reduce", BRIDGE, bridge),
            _inside("all_gather", isl),
        )
        return Collective(kind, isl, tuple(s for s in steps if s.groups), base)
    half = _HALF[kind]
    steps = (_inside(half, isl), Step(half, BRIDGE, bridge))
    if kind == "all-gather":
        steps = steps[::-1]
    return Collective(kind, isl, tuple(s for s in steps if s.groups), base * k)



@functools.lru_cache(maxsize=4096)
def describe(kind: Kind, islands: tuple[tuple[int, ...], ...]) -> Collective:
    """The description of ``kind`` among ``islands`` (cached: plans repeat their groups)."""
    return _build(kind, islands)


def allreduce(islands: Iterable[Iterable[int]]) -> Collective:
    """SUM all-reduce among every rank of ``islands`` (module docstring)."""
    return _build("all-reduce", islands)


def reduce_scatter(islands: Iterable[Iterable[int]]) -> Collective:
    """ZeRO-1's gradient half: each rank ends owning `owned(rank)`, summed over all ranks."""
    return _build("reduce-scatter", islands)


def all_gather(islands: Iterable[Iterable[int]]) -> Collective:
    """ZeRO-1's parameter half: every rank's `owned(rank)` parts to every rank."""
    return _build("all-gather", islands)
