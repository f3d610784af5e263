"""The embedding, the output head and the cross-entropy, split by vocabulary over a stage's
tensor-parallel ranks (Megatron-LM's VocabParallelEmbedding, ColumnParallelLinear head and
vocab_parallel_cross_entropy).

TP rank r of t holds the vocabulary rows [V r // t, V (r + 1) // t) of the embedding and of
the head (:func:`polychip.runtime.tensor_parallel.part_bounds`: a vocabulary that t does not
divide is split within one row -- nothing is padded, so the model is the same whatever t).

- Embedding: each rank looks up the tokens of its range, zeroes the others, and the partial
  outputs are summed: an all-reduce, or under sequence parallelism a reduce-scatter straight
  into the ranks' sequence parts (:func:`polychip.runtime.tp_regions.leave_tp`).
- Head: column-parallel by vocabulary: each rank computes the logits of its range,
  [b, s, V/t]; the whole logits are never gathered.
- Cross-entropy: the max and the sum of exponentials are all-reduced over the TP group
  ([b, s] values each), the target's logit comes from the rank that owns it (an all-reduce of
  [b, s] in which the other ranks add zero). Backward needs no collective: each rank's
  gradient is softmax - one-hot on its own columns.

Without ``vocab_parallel`` (or at TP degree 1) every rank holds the whole embedding and head.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from polychip.runtime.tensor_parallel import TensorParallel, part_bounds
from polychip.runtime.tp_regions import (
    column_parallel,
    gather_sequence,
    leave_tp,
    scatter_sequence,
)


def vocab_range(vocab_size: int, tp: TensorParallel) -> tuple[int, int]:
    """[start, end) of the vocabulary rows this rank holds."""
    return part_bounds(vocab_size, tp.rank, tp.size) if tp.vp else (0, vocab_size)


class VocabEmbedding(nn.Module):
    """Token ids [b, s] -> the residual stream: [b, s, h], or [b, s/t, h] under sequence
    parallelism."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.start, self.end = vocab_range(vocab_size, tp)
        self.weight = nn.Parameter(torch.empty(self.end - self.start, hidden_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.tp.vp:
            return scatter_sequence(F.embedding(ids, self.weight), self.tp)
        outside = (ids < self.start) | (ids >= self.end)
        local = (ids - self.start).masked_fill(outside, 0)
        partial = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return leave_tp(partial, self.tp)


class VocabHead(nn.Module):
    """The residual stream (after the final norm) -> logits of this rank's vocabulary range,
    [b, s, V/t] with ``vocab_parallel``, else the whole [b, s, V]."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.start, self.end = vocab_range(vocab_size, tp)
        self.weight = nn.Parameter(torch.empty(self.end - self.start, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.vp:
            return column_parallel(x, self.tp, self.weight)[0]
        return F.linear(gather_sequence(x, self.tp), self.weight)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                tp: TensorParallel, start: int) -> torch.Tensor:
        """logits [n, V/t] of this rank's range, targets [n] -> loss [n] (each token's)."""
        maximum = logits.detach().max(dim=-1).values
        tp.all_reduce_(maximum, dist.ReduceOp.MAX)
        shifted = logits.detach() - maximum.unsqueeze(-1)
        outside = (targets < start) | (targets >= start + logits.shape[-1])
        local = (targets - start).masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1)
        target_logit = tp.all_reduce_(target_logit.masked_fill(outside, 0.0).contiguous())
        exp = shifted.exp_()  # in place: the softmax reuses this one [n, V/t] buffer
        sum_exp = tp.all_reduce_(exp.sum(dim=-1))
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local, outside)
        return sum_exp.log() - target_logit

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        softmax, local, outside = ctx.saved_tensors
        grad_logits = softmax.clone()
        rows = torch.arange(grad_logits.shape[0], device=grad_logits.device)
        grad_logits[rows, local] -= (~outside).to(grad_logits.dtype)
        return grad_logits * grad.unsqueeze(-1), None, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, tp: TensorParallel,
                  vocab_start: int) -> torch.Tensor:
    """Mean cross-entropy over every token of logits [b, s, V or V/t] against targets [b, s]:
    vocabulary-parallel when the logits are this rank's range (``tp.vp``), else whole."""
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if not tp.vp:
        return F.cross_entropy(flat, targets.reshape(-1))
    return _VocabParallelCrossEntropy.apply(flat, targets.reshape(-1), tp, vocab_start).mean()
