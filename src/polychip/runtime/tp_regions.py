"""Entering and leaving the tensor-parallel region of a block: the collectives, each with
its backward (Megatron-LM; sequence parallelism after Korthikanti et al. 2022).

Without sequence parallelism the residual stream is replicated on the t ranks of a stage:

  enter (before a column-parallel layer)  identity        backward: all-reduce
  leave (after a row-parallel layer)      all-reduce      backward: identity

With sequence parallelism each rank holds s/t positions of the residual stream (the norms
run on them), and the all-reduce becomes a reduce-scatter plus an all-gather of the same
total bytes:

  enter  all-gather along the sequence    backward: reduce-scatter
  leave  reduce-scatter along it          backward: all-gather

Activations are [batch, sequence, hidden]; rank r holds positions [r s/t, (r+1) s/t).
Under sequence parallelism the column-parallel layers that share one input run through
:func:`column_parallel`, which keeps only the rank's s/t positions of that input for the
backward pass and all-gathers them again there (Megatron's sequence-parallel
ColumnParallelLinear): the activation memory of a block then divides by t, as the cost model
assumes, for one more all-gather per column-parallel input in the backward.

The embedding's output enters the sequence-parallel stream by :func:`scatter_sequence`
(replicated embedding: each rank keeps its positions) or by the reduce-scatter (vocabulary-
parallel embedding: partial sums); a replicated head leaves it by :func:`gather_sequence`
with a plain split backward (each rank computes the whole head, so its gradient is whole).

A zero-bubble schedule splits the backward in two (:mod:`polychip.runtime.backward`): B, the
input gradient, then later W, the weight gradients, which run :func:`column_parallel`'s
sequence-parallel backward once each. :func:`backward_half` tells it which half runs, so
that B only computes and reduce-scatters the input gradient and W only gathers the kept
input again and computes the weight gradients: the same work and collectives as one whole
backward, none of it twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F

from polychip.runtime import distcalls
from polychip.runtime.tensor_parallel import TensorParallel


def _all_gather_seq(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """[b, s/t, h] on each rank -> [b, s, h], the ranks' parts in rank order."""
    x = x.contiguous()
    out = torch.empty((tp.size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    distcalls.all_gather_single(out, x, group=tp.group)  # type: ignore[arg-type]
    parts = out.view(tp.size, *x.shape)  # [t, b, s/t, h]
    return parts.transpose(0, 1).reshape(x.shape[0], -1, *x.shape[2:])


def _reduce_scatter_seq(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """[b, s, h] partial sums on each rank -> the sum's positions of this rank, [b, s/t, h]."""
    local = tp.local_seq_len(x.shape[1])
    parts = x.reshape(x.shape[0], tp.size, local, *x.shape[2:]).transpose(0, 1).contiguous()
    out = torch.empty_like(parts[0])
    distcalls.reduce_scatter_single(out, parts.flatten(0, 1), group=tp.group)  # type: ignore[arg-type]
    return out


def _split_seq(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """This rank's positions of a [b, s, h] tensor every rank holds whole."""
    local = tp.local_seq_len(x.shape[1])
    return x.narrow(1, tp.rank * local, local).contiguous()


Half = Literal["whole", "input", "weight"]
_running: list[Half] = ["whole"]  # a module global, not thread-local: on a device, autograd
# runs a backward's nodes on its own device thread


@contextmanager
def backward_half(half: Half) -> Iterator[None]:
    """Inside, :func:`column_parallel`'s sequence-parallel backward computes only the input
    gradient ("input": a zero-bubble B) or only the weight gradients ("weight": W)."""
    before, _running[0] = _running[0], half
    try:
        yield
    finally:
        _running[0] = before


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp = tp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.tp.all_reduce_(grad.contiguous().clone()), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        return tp.all_reduce_(x.contiguous().clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class _GatherSeq(torch.autograd.Function):
    """All-gather along the sequence for a layer every rank computes whole: backward, the
    gradient is whole and equal on every rank, so each keeps its part of it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp = tp
        return _all_gather_seq(x, tp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _split_seq(grad, ctx.tp), None


class _ReduceScatterSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp = tp
        return _reduce_scatter_seq(x, tp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _all_gather_seq(grad, ctx.tp), None


class _ScatterSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp = tp
        return _split_seq(x, tp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _all_gather_seq(grad, ctx.tp), None


class _GatheredColumnLinears(torch.autograd.Function):
    """y_i = all_gather(x) w_i^T for column-parallel weights sharing the input x (this
    rank's [b, s/t, h]); only x is kept for backward, which gathers it again (for the weight
    gradients; :func:`backward_half` may ask for only one half)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel,  # type: ignore[override]
                *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.tp = tp
        ctx.save_for_backward(x, *weights)
        whole = _all_gather_seq(x, tp)
        return tuple(F.linear(whole, w) for w in weights)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        x, *weights = ctx.saved_tensors
        half = _running[0]
        grad_x, grad_weights = None, [None] * len(grads)
        if half != "input":
            whole = _all_gather_seq(x, ctx.tp).flatten(0, -2)  # [b s, h]
            grad_weights = [g.flatten(0, -2).T @ whole for g in grads]
        if half != "weight":
            grad_whole = sum(g @ w for g, w in zip(grads, weights, strict=True))
            grad_x = _reduce_scatter_seq(grad_whole, ctx.tp)
        return grad_x, None, *grad_weights


def column_parallel(x: torch.Tensor, tp: TensorParallel, *weights: torch.Tensor
                    ) -> tuple[torch.Tensor, ...]:
    """The residual stream ``x`` entering column-parallel layers of ``weights`` that share it
    as input (q/k/v, gate/up, a vocabulary-parallel head): the whole sequence on every rank,
    each rank's contribution to the input gradient summed. Under sequence parallelism
    (all-gather, backward reduce-scatter) only this rank's positions of ``x`` are kept for
    the backward pass."""
    if tp.sp:
        return _GatheredColumnLinears.apply(x, tp, *weights)
    if tp.size > 1:
        x = _CopyToTP.apply(x, tp)
    return tuple(F.linear(x, w) for w in weights)


def leave_tp(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Partial sums leaving a row-parallel layer (or a vocabulary-parallel embedding) for the
    residual stream: summed, and under sequence parallelism kept only at this rank's
    positions."""
    if tp.size == 1:
        return x
    return _ReduceScatterSeq.apply(x, tp) if tp.sp else _ReduceFromTP.apply(x, tp)


def scatter_sequence(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """A whole [b, s, h] tensor computed alike on every rank (a replicated embedding's
    output) entering the residual stream: this rank's positions under sequence
    parallelism (backward: all-gather), else unchanged."""
    return _ScatterSeq.apply(x, tp) if tp.sp else x


def gather_sequence(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """The residual stream leaving for a layer every rank computes whole (a replicated
    head): all-gathered under sequence parallelism, backward this rank's part of the
    (whole, equal) gradient; else unchanged."""
    return _GatherSeq.apply(x, tp) if tp.sp else x
