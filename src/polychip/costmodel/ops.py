"""The kernels of a pass, as data: GEMMs, memory-bound streams, fused attention and the TP
collectives between them, each with the tensors it reads, writes and saves for backward.

`blocks.py` and `ends.py` list the forward kernels of a transformer block, the embedding and
the head as the runtime runs them; `backward_of` derives most of the backward (a GEMM's two
gradient GEMMs and its weight-gradient accumulation, twice an elementwise kernel's traffic,
the conjugate collective) and marks the kernels that compute weight gradients (`wgrad`: the
W of a zero-bubble schedule, which nothing downstream waits for); `saved_bytes` is the
memory a forward keeps for its backward (tensors deduplicated by name, as autograd shares a
storage saved by two kernels). One description serves the time (`compute.py`) and the
memory (`memory.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ELEMENTWISE_BACKWARD = 2.0
"""Backward traffic and kernels of an elementwise kernel, over its forward's: the backward
reads the output gradient and the saved input(s) and writes the input gradient(s). The
runtime's fp32 block dispatches 50 such backward kernels for 27 forward ones (1.85;
tests/costmodel/test_runtime_block.py counts them)."""


@dataclass(frozen=True)
class Tensor:
    """A tensor on one TP rank for one micro-batch."""

    name: str
    elems: float
    itemsize: int

    @property
    def n_bytes(self) -> float:
        return self.elems * self.itemsize


@dataclass(frozen=True)
class Gemm:
    """`batch` products of an (m x k) input by a (k x n) operand. `weight`: the operand is a
    parameter, whose gradient is added into the gradient buffer every micro-batch (else an
    activation, such as the keys of attention scores, whose gradient flows back)."""

    name: str
    m: int
    n: int
    k: int
    batch: int = 1
    weight: bool = True
    bias: bool = False
    saves: tuple[Tensor, ...] = ()
    wgrad: bool = False  # a backward kernel computing a weight gradient (W, not B)


@dataclass(frozen=True)
class Stream:
    """Memory-bound kernel(s) moving `n_bytes` (read + written) in `kernels` launches."""

    name: str
    n_bytes: float
    kernels: int = 1
    saves: tuple[Tensor, ...] = ()
    backward: float = ELEMENTWISE_BACKWARD  # backward traffic and kernels over forward's
    wgrad: bool = False  # a backward kernel computing a weight gradient (W, not B)


@dataclass(frozen=True)
class Attention:
    """Fused (flash) attention: `matmuls` s x s x d products per (sequence, head)."""

    name: str
    sequences_heads: int
    seq_len: int
    head_dim: int
    causal: bool
    matmuls: int
    n_bytes: float
    saves: tuple[Tensor, ...] = ()
    backward_bytes: float = 0.0


@dataclass(frozen=True)
class Collective:
    """A TP collective of `n_bytes` (the whole tensor) in the forward and/or the backward:
    all-reduce, all-gather, reduce-scatter, or None. `wgrad`: its backward serves only the
    weight gradient (sequence parallelism's re-gather of a saved input shard)."""

    forward: str | None
    backward: str | None
    n_bytes: float
    wgrad: bool = False


Op = Gemm | Stream | Attention | Collective


def stream(
    name: str,
    reads: Iterable[Tensor],
    writes: Iterable[Tensor],
    *,
    kernels: int = 1,
    saves: tuple[Tensor, ...] = (),
    backward: float = ELEMENTWISE_BACKWARD,
) -> Stream:
    moved = sum(t.n_bytes for t in reads) + sum(t.n_bytes for t in writes)
    return Stream(name, moved, kernels, saves, backward)


def backward_of(op: Op, compute_bytes: int, reduce_bytes: int) -> list[Op]:
    """The backward kernels of one forward kernel (in execution order). A weight GEMM's
    operand gradient, its accumulation into the gradient buffer and its bias gradient are
    weight-gradient work (`wgrad`); the input gradient is not."""
    if isinstance(op, Gemm):
        w = op.weight
        out: list[Op] = [
            Gemm(op.name + ".grad-input", op.m, op.k, op.n, op.batch, weight=False),
            Gemm(op.name + ".grad-operand", op.k, op.n, op.m, op.batch, weight=False, wgrad=w),
        ]
        if op.weight:  # the weight's gradient added into the reduce-dtype buffer
            params = op.k * op.n
            out.append(Stream(op.name + ".grad-acc", params * (compute_bytes + 2 * reduce_bytes),
                              wgrad=True))
        if op.bias:
            out.append(Stream(op.name + ".bias-grad", op.m * op.n * compute_bytes, wgrad=True))
        return out
    if isinstance(op, Stream):
        kernels = round(op.kernels * op.backward)
        return [Stream(op.name + ".bwd", op.n_bytes * op.backward, kernels)] if kernels else []
    if isinstance(op, Attention):
        return [
            Attention(
                op.name + ".bwd", op.sequences_heads, op.seq_len, op.head_dim, op.causal,
                matmuls=5, n_bytes=op.backward_bytes,
            )
        ]  # fmt: skip
    if op.backward is None:
        return []
    return [Collective(op.backward, None, op.n_bytes, wgrad=op.wgrad)]


def backward_pass(forward: Sequence[Op], compute_bytes: int, reduce_bytes: int) -> list[Op]:
    """The backward of a forward pass: each kernel's backward, in reverse order."""
    out: list[Op] = []
    for op in reversed(forward):
        out.extend(backward_of(op, compute_bytes, reduce_bytes))
    return out


def is_wgrad(op: Op) -> bool:
    """Whether a backward kernel computes a weight gradient (W) rather than an input
    gradient (B)."""
    return getattr(op, "wgrad", False)


def saved_bytes(ops: Iterable[Op]) -> float:
    """Bytes the forward keeps for the backward, each tensor counted once."""
    seen: dict[str, float] = {}
    for op in ops:
        for t in getattr(op, "saves", ()):
            seen[t.name] = t.n_bytes
    return sum(seen.values())


def gemm_flops(ops: Iterable[Op]) -> float:
    """Matrix FLOPs of the GEMMs in `ops` (2 per multiply-add)."""
    return sum(2.0 * op.batch * op.m * op.n * op.k for op in ops if isinstance(op, Gemm))
