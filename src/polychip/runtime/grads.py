"""Gradient combination for uneven data parallelism, and the executor of the collectives'
description (`polychip.plan.collectives`).

Replica r holds b_r of the B samples of the global batch and computes g_r, the gradient of the
*mean* loss over its own samples. The gradient of the mean loss over all B samples is
Σ_r (b_r / B) · g_r, so each rank scales its gradients by b_r / B and the ranks SUM them: the
update is exactly that of one large batch, however unevenly the batch was split.

Islands: ranks of one chip vendor share a native collective library; vendors' libraries do not
talk to each other. A :class:`RankCollective` runs one description as one rank takes part in
it: inside an island a reduce-scatter, all-reduce or all-gather over the island's group (its
native backend), across islands an all-reduce or reduce-scatter of this rank's own chunks over
the bridge groups (gloo), staged through host memory when the tensors live on a device. The
calls of one step are issued together (``async_op=True``) and waited for before the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.distributed as dist

from polychip.plan.collectives import Collective, Group, Op
from polychip.runtime import distcalls
from polychip.runtime.errors import RuntimeSetupError

AllReduce = Callable[[torch.Tensor], None]
"""An in-place SUM all-reduce of one tensor over the data-parallel ranks."""

# The calls a description's steps make (`distcalls`: either torch's names);
# `polychip.runtime.commcount` wraps them to count their bytes.
CALLS: dict[str, Callable[..., dist.Work | None]] = {
    "all_reduce": dist.all_reduce,
    "reduce_scatter": distcalls.reduce_scatter_single,
    "all_gather": distcalls.all_gather_single,
}


def scale_for_share(batch_share: int, global_batch: int) -> float:
    """The weight b_r / B of a replica holding ``batch_share`` of ``global_batch`` samples."""
    if global_batch < 1:
        raise RuntimeSetupError(
            f"global_batch={global_batch}: the global batch must hold at least 1 sample")
    if not 0 <= batch_share <= global_batch:
        raise RuntimeSetupError(
            f"batch_share={batch_share} is outside 0..global_batch={global_batch}: a replica's "
            f"share is part of the global batch; check the plan's batch shares")
    return batch_share / global_batch


def weighted_allreduce_(params: Iterable[torch.nn.Parameter], batch_share: int,
                        global_batch: int, group: dist.ProcessGroup | None = None, *,
                        allreduce: AllReduce | None = None) -> None:
    """Make every rank's ``.grad`` equal to Σ_r (b_r / B) · g_r, in place.

    Gradients are flattened into one buffer per (device, dtype), so each bucket is a single
    collective, then copied back. A parameter without a gradient (a rank with no samples)
    contributes zeros. Every rank must pass the same parameters in the same order.
    ``allreduce`` replaces the flat SUM all-reduce over ``group`` (for example
    :meth:`RankCollective.run` of an all-reduce across islands).
    """
    scale = scale_for_share(batch_share, global_batch)
    if allreduce is None:
        def allreduce(t: torch.Tensor) -> None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    buckets: dict[tuple[str, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((str(p.device), p.dtype), []).append(p)
    for key in sorted(buckets, key=str):  # the same collective order on every rank
        grads = [p.grad for p in buckets[key]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat.mul_(scale)
        allreduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


@dataclass(frozen=True)
class Call:
    """One collective call of this rank: ``op`` on ``part`` of the buffer over ``group``;
    ``staged``: through host memory (a bridge on device tensors)."""

    op: Op
    part: Group
    group: dist.ProcessGroup
    staged: bool


def _span(a: Fraction, b: Fraction, n: int) -> tuple[int, int]:
    lo, hi = a * n, b * n
    assert lo.denominator == 1 and hi.denominator == 1, "buffer not a multiple of granularity"
    return int(lo), int(hi)


class _Pending:
    """An issued call: ``finish()`` waits for it and writes its result into the buffer."""

    def __init__(self, work: dist.Work | None, result: torch.Tensor,
                 target: torch.Tensor) -> None:
        self.work, self.result, self.target = work, result, target

    def finish(self) -> None:
        if self.work is not None:
            self.work.wait()
        if self.result is not self.target:
            self.target.copy_(self.result)


def _issue(call: Call, buffer: torch.Tensor, rank: int) -> _Pending:
    n = buffer.numel()
    a, b = _span(call.part.start, call.part.end, n)
    view = buffer[a:b]
    host = call.staged and buffer.device.type != "cpu"

    def where(t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if host else t

    if call.op == "all_reduce":
        work_on = where(view)
        work = CALLS["all_reduce"](work_on, op=dist.ReduceOp.SUM, group=call.group,
                                   async_op=True)
        return _Pending(work, work_on, view)
    mine = buffer[slice(*_span(*call.part.part_of(rank), n))]
    if call.op == "reduce_scatter":
        out = torch.empty_like(where(mine))
        work = CALLS["reduce_scatter"](out, where(view), op=dist.ReduceOp.SUM,
                                       group=call.group, async_op=True)
        return _Pending(work, out, mine)
    full = torch.empty_like(where(view))
    work = CALLS["all_gather"](full, where(mine), group=call.group, async_op=True)
    return _Pending(work, full, view)


@dataclass(frozen=True)
class RankCollective:
    """One description as ``rank`` executes it: its calls, step by step."""

    description: Collective
    rank: int
    steps: tuple[tuple[Call, ...], ...]  # only the steps this rank takes part in

    def run(self, buffer: torch.Tensor) -> None:
        """Run it on ``buffer`` (1-D, a multiple of the description's granularity long), in
        place: summed (all-reduce), this rank's owned parts summed (reduce-scatter; the rest
        is left partial), or every rank's owned parts gathered (all-gather)."""
        assert buffer.dim() == 1 and buffer.numel() % self.description.granularity == 0
        for calls in self.steps:
            pending = [_issue(call, buffer, self.rank) for call in calls]
            for p in pending:
                p.finish()

    def owned_spans(self, numel: int) -> list[tuple[int, int]]:
        """[start, end) of the parts this rank owns in a buffer of ``numel`` elements."""
        return [_span(a, b, numel) for a, b in self.description.owned(self.rank)]
