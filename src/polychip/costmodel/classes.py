"""Identical replicas are priced once.

A replica's pipeline time, stage ends, per-stage memory and optimizer step depend on its
shape (chips, layers, TP degrees, recompute, batch, micro-batch size) and on the links
between its consecutive stages -- not on which nodes or chip slots it holds. Plans of
thousands of chips repeat a few shapes hundreds of times, so `CostModel.evaluate` groups
replicas by that key, prices one of each class and hands the figures to every member: the
same floats as pricing each replica, in a fraction of the time. Only the gradient sync,
which depends on where each replica sits, looks at every replica (`gradsync.py`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from polychip.plan.plan import Replica

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel

T = TypeVar("T")
MEMO_SIZE = 256  # replica tuples whose classes a cost model keeps


def replica_key(cm: CostModel, replica: Replica) -> tuple:
    """Replicas with equal keys have equal pipelines, memory and optimizer steps (the
    last-to-first link: interleaved 1F1B's wrap-around)."""
    stages, link = replica.stages, cm.link
    return (replica.shape_key(),
            tuple([link(a.node, b.node) for a, b in itertools.pairwise(stages)]),
            link(stages[-1].node, stages[0].node))


@dataclass(frozen=True)
class ReplicaClasses:
    """``replicas`` grouped by `replica_key`: ``class_of[ri]`` is replica ri's class, and
    ``first[c]`` the index of class c's first replica (its representative)."""

    replicas: tuple[Replica, ...]
    class_of: tuple[int, ...]
    first: tuple[int, ...]

    @classmethod
    def of(cls, cm: CostModel, replicas: Sequence[Replica]) -> ReplicaClasses:
        """The classes of ``replicas``; a tuple's kept for the next call with it (one
        candidate priced under several schedules, then its memory and sync)."""
        memo = cm.classes_memo
        hit = memo.get(id(replicas))
        if hit is not None and hit[0] is replicas:
            return hit[1]
        index: dict[tuple, int] = {}
        class_of, first = [], []
        for ri, r in enumerate(replicas):
            c = index.setdefault(replica_key(cm, r), len(first))
            if c == len(first):
                first.append(ri)
            class_of.append(c)
        out = cls(tuple(replicas), tuple(class_of), tuple(first))
        if isinstance(replicas, tuple):  # (immutable: the same object, the same classes)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[id(replicas)] = (replicas, out)
        return out

    @property
    def representatives(self) -> list[Replica]:
        return [self.replicas[ri] for ri in self.first]

    def per_replica(self, figure: Callable[[Replica], T]) -> list[T]:
        """``figure`` of every replica, computed once per class."""
        values = [figure(r) for r in self.representatives]
        return [values[c] for c in self.class_of]
