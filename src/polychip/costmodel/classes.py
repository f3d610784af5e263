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


def replica_key(cm: CostModel, replica: Replica) -> tuple:
    """Replicas with equal keys have equal pipelines, memory and optimizer steps (the
    last-to-first link: interleaved 1F1B's wrap-around)."""
    stages = replica.stages
    return (replica.shape_key(),
            tuple(cm.link(a.node, b.node) for a, b in itertools.pairwise(stages)),
            cm.link(stages[-1].node, stages[0].node))


@dataclass(frozen=True)
class ReplicaClasses:
    """``replicas`` grouped by `replica_key`: ``class_of[ri]`` is replica ri's class, and
    ``first[c]`` the index of class c's first replica (its representative)."""

    replicas: tuple[Replica, ...]
    class_of: tuple[int, ...]
    first: tuple[int, ...]

    @classmethod
    def of(cls, cm: CostModel, replicas: Sequence[Replica]) -> ReplicaClasses:
        index: dict[tuple, int] = {}
        class_of, first = [], []
        for ri, r in enumerate(replicas):
            c = index.setdefault(replica_key(cm, r), len(first))
            if c == len(first):
                first.append(ri)
            class_of.append(c)
        return cls(tuple(replicas), tuple(class_of), tuple(first))

    @property
    def representatives(self) -> list[Replica]:
        return [self.replicas[ri] for ri in self.first]

    def per_replica(self, figure: Callable[[Replica], T]) -> list[T]:
        """``figure`` of every replica, computed once per class."""
        values = [figure(r) for r in self.representatives]
        return [values[c] for c in self.class_of]
