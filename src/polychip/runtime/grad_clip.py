"""Gradient clipping by the global norm over every rank, exactly as
``torch.nn.utils.clip_grad_norm_`` clips the whole model in one process.

The global norm counts every element of the model's gradient once. After the gradient sync,
copies of one element lie on many ranks; each rank sums the squares of only the elements it
*owns for the norm*, one SUM all-reduce of that scalar over the world group adds them up, and
every rank scales the gradients it steps by ``min(1, max_norm / (norm + 1e-6))``.

Ownership, so that every element is owned exactly once:

- without ZeRO-1 every holder of a segment ends the sync with the same (sample-weighted) sum,
  so only the ranks of replica 0 own elements -- it holds the whole model, each layer on one
  stage. Inside a stage, a TP rank owns its part of each split parameter; a replicated one
  (norms, a replicated embedding / head, and the norms' partial gradients under sequence
  parallelism, summed over the TP group before the sync) is owned by TP rank 0 only;
- under ZeRO-1 the reduce-scatter leaves each rank the final gradient of only its owned spans
  (:func:`polychip.runtime.shards.owned_spans`), disjoint among the holders of a *piece* of a
  segment. A piece holds its part of every split parameter -- disjoint between pieces -- and
  the whole of every replicated one, so a replicated element is owned in piece 0 only. What no
  other stage holds (not in any bucket) is owned as without ZeRO-1 inside the TP group;
- a head-only stage's copy of a tied embedding is the embedding's gradient again (the pipeline
  keeps the copies equal): never owned (the runtime refuses such plans today).

fp16: the optimizer unscales and checks for inf/NaN first; a skipped step clips nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from polychip.plan.plan import Plan
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.param_groups import entries_in
from polychip.runtime.shards import OwnedSpan
from polychip.runtime.topology import RankRole

EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
Ranges = list[tuple[int, int]]


def tied_copies(plan: Plan, role: RankRole) -> frozenset[str]:
    """The parameters of ``role``'s stage that copy another's gradient: a tied embedding's
    head on a later stage than the embedding."""
    tied = plan.model.tie_embeddings and role.last_stage and not role.first_stage
    return frozenset({"head.weight"}) if tied else frozenset()


def _in_piece_zero(grads: StageGrads, span: OwnedSpan, tp_rank: int) -> bool:
    """Whether the span's replicated elements are this rank's to count under ZeRO-1."""
    if span.staged is not None:
        return span.staged[1] == 0
    bucket = next((b for b in grads.buckets if b.start <= span.start < b.end), None)
    if bucket is None:  # held by no other stage: the TP group's copies
        return tp_rank == 0
    return bucket.pieces[0].piece.index == 0


def norm_ranges(grads: StageGrads, spans: Sequence[OwnedSpan], *, replica: int,
                tp_rank: int, skip: frozenset[str] = frozenset()) -> list[Ranges]:
    """For each span, the [start, end) ranges (relative to it) whose elements this rank owns
    for the global norm (module docstring); ``skip``: parameter names never owned."""
    out: list[Ranges] = []
    for span in spans:
        if grads.zero1:
            replicated_too = _in_piece_zero(grads, span, tp_rank)
        elif replica != 0:
            out.append([])
            continue
        else:
            replicated_too = tp_rank == 0
        out.append([(a, b) for e, a, b in entries_in(grads, span) if e.name not in skip
                    and (e.split is not None or replicated_too)])
    return out


class GradClipper:
    """Clips the optimizer's gradients (one tensor per span) to a global norm."""

    def __init__(self, max_norm: float, ranges: list[Ranges]) -> None:
        self.max_norm, self.ranges = max_norm, ranges

    def sum_of_squares(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """This rank's owned part of the squared norm (a float64 scalar on the CPU)."""
        parts = [torch.linalg.vector_norm(g[a:b]).square()
                 for g, ranges in zip(grads, self.ranges, strict=True) for a, b in ranges]
        if not parts:
            return torch.zeros((), dtype=torch.float64)
        return torch.stack(parts).sum().cpu().double()  # some devices have no float64

    def clip_(self, grads: Sequence[torch.Tensor]) -> float:
        """Collective (every rank, once per step): scale ``grads`` in place so the global
        norm is at most ``max_norm``; returns the norm before clipping."""
        total = self.sum_of_squares(grads)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        norm = float(total.sqrt())
        coef = min(1.0, self.max_norm / (norm + EPS))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return norm
