"""Megatron-style tensor parallelism inside one pipeline stage.

A stage of TP degree t splits every block over its t ranks: the query/key/value projections
and the MLP's gate/up projections are *column-parallel* (each rank holds 1/t of the output
rows: its share of the attention heads, of the FFN width), the attention output and the MLP's
down projection are *row-parallel* (1/t of the input columns). Each block then needs two
collectives per pass: ``copy_to_tp`` (identity forward, all-reduce of the gradient backward)
where the replicated residual stream enters a column-parallel layer, and ``reduce_from_tp``
(all-reduce forward, identity backward) after a row-parallel layer. Norms, the embedding and
the output head stay replicated on every TP rank (their gradients come out equal on all of
them).

Which parameter is split along which dimension is said once, here (:func:`shard_dim`): the
model's initialisation (each rank takes its slice of the full tensor, so the values do not
depend on the TP degree), the gradient reduction across replicas of different TP degrees and
the tests all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

COLUMN_PARALLEL = ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight",
                   "mlp.w_gate.weight", "mlp.w_up.weight")
ROW_PARALLEL = ("attn.wo.weight", "mlp.w_down.weight")


def shard_dim(name: str) -> int | None:
    """The dimension a parameter is split along under TP (0: column-parallel rows, 1:
    row-parallel columns), or None for a parameter replicated on every TP rank."""
    if name.endswith(COLUMN_PARALLEL):
        return 0
    if name.endswith(ROW_PARALLEL):
        return 1
    return None


def full_shape(name: str, local_shape: tuple[int, ...], tp_size: int) -> tuple[int, ...]:
    """The unsplit shape of a parameter whose slice on one of ``tp_size`` ranks has
    ``local_shape``."""
    dim = shard_dim(name)
    if dim is None or tp_size == 1:
        return local_shape
    shape = list(local_shape)
    shape[dim] *= tp_size
    return tuple(shape)


def shard_of(full: torch.Tensor, name: str, tp_rank: int, tp_size: int) -> torch.Tensor:
    """TP rank ``tp_rank``'s slice of the full tensor ``full`` (a view; the whole tensor when
    the parameter is replicated)."""
    dim = shard_dim(name)
    if dim is None or tp_size == 1:
        return full
    size = full.shape[dim] // tp_size
    return full.narrow(dim, tp_rank * size, size)


@dataclass(frozen=True)
class TensorParallel:
    """A stage's TP group as one rank sees it. ``group`` is None only when ``size`` is 1."""

    size: int = 1
    rank: int = 0
    group: object | None = None

    def __post_init__(self) -> None:
        assert 0 <= self.rank < self.size, (self.rank, self.size)

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        assert self.group is not None, "a TP degree > 1 needs its process group"
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)  # type: ignore[arg-type]
        return tensor


NO_TP = TensorParallel()


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


def copy_to_tp(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Enter a column-parallel layer: identity forward; the gradient is summed over the TP
    ranks backward (each rank's heads contributed part of it)."""
    return x if tp.size == 1 else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Leave a row-parallel layer: sum the ranks' partial outputs forward; identity backward."""
    return x if tp.size == 1 else _ReduceFromTP.apply(x, tp)


def broadcast_from_leader(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """In place: every TP rank gets the leader's (TP rank 0's) ``tensor`` (the stage input
    the leader received from the previous stage, or the output gradient from the next)."""
    if tp.size > 1:
        dist.broadcast(tensor, group_src=0, group=tp.group)  # type: ignore[arg-type]
    return tensor
