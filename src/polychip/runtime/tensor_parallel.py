"""Megatron-style tensor parallelism inside one pipeline stage: the group, which parameter is
split how, and how a stage's input and output pass through its leader.

A stage of TP degree t splits every block over its t ranks: the query/key/value projections
and the MLP's gate/up projections are *column-parallel* (each rank holds 1/t of the output
rows: its share of the attention heads, of the FFN width), the attention output and the MLP's
down projection are *row-parallel* (1/t of the input columns). With ``vocab_parallel`` the
embedding and the output head are split by vocabulary rows too (:mod:`.vocab_parallel`);
otherwise they, like the norms, are replicated. With ``sequence_parallel`` the residual stream
between the blocks is split along the sequence (:mod:`.tp_regions`).

Which parameter is split along which dimension, and where each rank's part starts, is said
once, here (:func:`shard_dim`, :class:`Split`): the model's initialisation (each rank takes
its part of the full tensor, so the values do not depend on the TP degree), the gradient
reduction across replicas of different TP degrees and the tests all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from polychip.runtime.errors import RuntimeSetupError

COLUMN_PARALLEL = ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight",
                   "mlp.w_gate.weight", "mlp.w_up.weight",
                   "attn.wq.bias", "attn.wk.bias", "attn.wv.bias")  # biases: by output rows
ROW_PARALLEL = ("attn.wo.weight", "mlp.w_down.weight")
VOCAB_PARALLEL = ("embed.weight", "head.weight")  # [vocab, hidden]: split by vocabulary rows


def shard_dim(name: str, *, vocab_parallel: bool) -> int | None:
    """The dimension a parameter is split along under TP (0: column-parallel rows, or
    vocabulary rows of the embedding and head with ``vocab_parallel``; 1: row-parallel
    columns), or None for a parameter replicated on every TP rank. The same for every TP
    degree, 1 included: a TP-1 stage holds the one part of a split parameter."""
    if name.endswith(COLUMN_PARALLEL):
        return 0
    if name.endswith(ROW_PARALLEL):
        return 1
    if vocab_parallel and name in VOCAB_PARALLEL:
        return 0
    return None


def part_bounds(full: int, part: int, parts: int) -> tuple[int, int]:
    """[start, end) of part ``part`` of ``parts`` of an extent ``full``: floor boundaries.
    The parts of a finer split (``parts`` a multiple of a coarser one's) nest exactly inside
    the coarser parts, so replicas of different TP degrees reshard exactly, and an extent that
    ``parts`` does not divide (a vocabulary) is split within one row."""
    return full * part // parts, full * (part + 1) // parts


@dataclass(frozen=True)
class Split:
    """How a parameter is split: along ``dim``, whose full extent is ``full``."""

    dim: int
    full: int

    def bounds(self, part: int, parts: int) -> tuple[int, int]:
        return part_bounds(self.full, part, parts)

    def part(self, tensor: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        """Part ``part`` of ``parts`` of the full ``tensor`` (a view)."""
        start, end = self.bounds(part, parts)
        return tensor.narrow(self.dim, start, end - start)


def split_of(name: str, local_shape: tuple[int, ...], tp_size: int, *, vocab_parallel: bool,
             vocab_size: int) -> Split | None:
    """The split of parameter ``name``, held with ``local_shape`` by a rank of a TP-degree
    ``tp_size`` stage (None: replicated). Heads and FFN width split evenly (the runtime
    checks that t divides them); the vocabulary within one row."""
    dim = shard_dim(name, vocab_parallel=vocab_parallel)
    if dim is None:
        return None
    full = vocab_size if name in VOCAB_PARALLEL else local_shape[dim] * tp_size
    return Split(dim, full)


@dataclass(frozen=True)
class TensorParallel:
    """A stage's TP group as one rank sees it. ``group`` is None only when ``size`` is 1.

    ``sequence_parallel`` and ``vocab_parallel`` are the job's choices (the same on every
    stage of a plan, whatever its degree, so that every holder of a parameter splits it the
    same way); they change the computation only when ``size`` > 1 (:attr:`sp`, :attr:`vp`).
    """

    size: int = 1
    rank: int = 0
    group: object | None = None
    sequence_parallel: bool = False
    vocab_parallel: bool = False

    def __post_init__(self) -> None:
        assert 0 <= self.rank < self.size, (self.rank, self.size)

    @property
    def sp(self) -> bool:
        """The residual stream is split along the sequence over the TP ranks."""
        return self.sequence_parallel and self.size > 1

    @property
    def vp(self) -> bool:
        """The embedding, head and cross-entropy are split by vocabulary over the TP ranks."""
        return self.vocab_parallel and self.size > 1

    def local_seq_len(self, seq_len: int) -> int:
        """Positions of a sequence one rank holds between blocks (all of them without SP)."""
        if not self.sp:
            return seq_len
        if seq_len % self.size:
            raise RuntimeSetupError(
                f"sequence parallelism splits each sequence of {seq_len} tokens over "
                f"{self.size} tensor-parallel ranks, and {self.size} does not divide "
                f"{seq_len}: use a sequence length divisible by {self.size}, or turn "
                f"sequence parallelism off (job.sequence_parallel = false)")
        return seq_len // self.size

    def all_reduce_(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
                    ) -> torch.Tensor:
        assert self.group is not None, "a TP degree > 1 needs its process group"
        dist.all_reduce(tensor, op=op, group=self.group)  # type: ignore[arg-type]
        return tensor


NO_TP = TensorParallel()


# ---- a stage's input and output pass through its leader (the schedule's rule) ------------
def share_from_leader(tensor: torch.Tensor | None, tp: TensorParallel,
                      shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
                      ) -> torch.Tensor:
    """What the leader (TP rank 0) received from a neighbouring stage -- the stage input, or
    the output gradient, [b, s, h] of ``shape`` -- as each TP rank needs it: the whole tensor
    (broadcast), or under sequence parallelism its own part of the sequence (scatter: each
    rank gets 1/t of the bytes). ``tensor``: the leader's, None on the other ranks."""
    if tp.size == 1:
        assert tensor is not None
        return tensor
    if not tp.sp:
        buffer = tensor if tensor is not None else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(buffer, group_src=0, group=tp.group)  # type: ignore[arg-type]
        return buffer
    local = (shape[0], tp.local_seq_len(shape[1]), *shape[2:])
    shard = torch.empty(local, dtype=dtype, device=device)
    parts = None if tensor is None else [p.contiguous() for p in tensor.chunk(tp.size, dim=1)]
    dist.scatter(shard, parts, group_src=0, group=tp.group)  # type: ignore[arg-type]
    return shard


def collect_to_leader(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor | None:
    """What the leader sends to a neighbouring stage -- the stage output, or the input
    gradient -- built from every TP rank's ``tensor``: under sequence parallelism the ranks'
    parts of the sequence gathered on the leader, else ``tensor`` itself (equal on every TP
    rank). None on the other ranks."""
    if not tp.sp:
        return tensor if tp.rank == 0 else None
    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(tp.size)] if tp.rank == 0 else None
    dist.gather(tensor, parts, group_dst=0, group=tp.group)  # type: ignore[arg-type]
    return torch.cat(parts, dim=1) if parts is not None else None


def broadcast_from_leader(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """In place: every TP rank gets the leader's (TP rank 0's) ``tensor``."""
    if tp.size > 1:
        dist.broadcast(tensor, group_src=0, group=tp.group)  # type: ignore[arg-type]
    return tensor


def sum_partial_grads_(params: list[torch.nn.Parameter], tp: TensorParallel) -> None:
    """Sum over the TP group the gradients each rank holds only part of (the norm weights
    under sequence parallelism: each rank saw 1/t of the positions), in one collective."""
    grads = [p.grad for p in params if p.grad is not None]
    if tp.size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tp.all_reduce_(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
