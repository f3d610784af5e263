"""Compute time of one micro-batch: per-op pricing of a block, the embedding and the head.

Each kernel of a pass (`blocks.py`, `ends.py`) is priced on the chip (`kernels.py`): GEMMs by
shape, memory-bound kernels at sustained memory bandwidth, fused attention by its FLOPs,
every kernel at least its launch cost; TP collectives over the node's link (`tpcomm.py`).
Full recompute adds one forward to the backward (`CostModel.stage_times`). A measured
profile, when given, replaces the analytic block times for the points it has.

The backward's weight-gradient kernels (`ops.is_wgrad`: a weight GEMM's operand gradient,
its accumulation into the gradient buffer, a bias gradient, the embedding's table scatter,
sequence parallelism's re-gather for the weight gradient) are priced apart as `wgrad_s`, the
W a zero-bubble schedule defers; a recomputed forward belongs to the input-gradient half (B).
A measured backward is split by the analytic share (`split_like`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from polychip.costmodel.blocks import Shard, block_forward
from polychip.costmodel.ends import embedding_passes, head_passes
from polychip.costmodel.kernels import flash_attention_s, gemm_s, stream_s, with_launches
from polychip.costmodel.ops import Attention, Collective, Gemm, Op, backward_pass, is_wgrad
from polychip.costmodel.tpcomm import INTRA_NODE_LATENCY_S, tp_collective_s
from polychip.spec.accelerators import Accelerator
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

__all__ = [
    "INTRA_NODE_LATENCY_S",
    "StageTimes",
    "block_times",
    "embedding_times",
    "head_times",
    "pass_s",
    "split_like",
]


@dataclass(frozen=True)
class StageTimes:
    """Seconds for one micro-batch on one stage: forward, and backward (with recompute).
    `wgrad_s`: the part of `bwd_s` that computes weight gradients (the W of a zero-bubble
    schedule, which nothing downstream waits for); the rest is the input gradient (B).
    `redo_s`: the part of `bwd_s` that re-runs checkpointed blocks' forward (full recompute;
    in B, which needs the activations first)."""

    fwd_s: float
    bwd_s: float
    wgrad_s: float = 0.0
    redo_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.fwd_s + self.bwd_s

    @property
    def igrad_s(self) -> float:
        """The input-gradient half of the backward (B): what the previous stage waits for."""
        return self.bwd_s - self.wgrad_s

    def scaled(self, factor: float) -> StageTimes:
        return StageTimes(self.fwd_s * factor, self.bwd_s * factor, self.wgrad_s * factor,
                          self.redo_s * factor)

    def split_backward(self) -> StageTimes:
        """The times when B and W run apart (zb-h1): a checkpointed block's forward runs
        once more in W, whose weight gradients need the activations B freed again
        (runtime/backward.py), so W and the backward grow by `redo_s`."""
        return StageTimes(self.fwd_s, self.bwd_s + self.redo_s, self.wgrad_s + self.redo_s,
                          self.redo_s)


def split_like(measured: StageTimes, analytic: StageTimes) -> StageTimes:
    """`measured` (whose backward was timed whole) with its weight-gradient part in the
    analytic share of the backward: W / backward of `analytic`."""
    share = analytic.wgrad_s / analytic.bwd_s if analytic.bwd_s > 0 else 0.0
    return StageTimes(measured.fwd_s, measured.bwd_s, measured.bwd_s * share, measured.redo_s)


def op_s(chip: Accelerator, job: TrainingJob, op: Op, tp: int) -> float:
    """Seconds of one kernel (or TP collective) on `chip`, launch included."""
    if isinstance(op, Gemm):
        c = job.compute_bytes
        device = gemm_s(
            chip, job.precision, op.m, op.n, op.k, batch=op.batch, in_bytes=c, out_bytes=c
        )
        return with_launches(chip, device, 1)
    if isinstance(op, Attention):
        device = flash_attention_s(
            chip, job.precision, sequences_heads=op.sequences_heads, seq_len=op.seq_len,
            head_dim=op.head_dim, matmuls=op.matmuls, causal=op.causal, n_bytes=op.n_bytes,
        )  # fmt: skip
        return with_launches(chip, device, 1)
    if isinstance(op, Collective):
        return 0.0 if op.forward is None else tp_collective_s(chip, op.forward, op.n_bytes, tp)
    return with_launches(chip, stream_s(chip, op.n_bytes), op.kernels)


def pass_s(chip: Accelerator, job: TrainingJob, ops: Iterable[Op], tp: int) -> float:
    """Seconds of a pass: its kernels one after another (nothing overlaps, TP collectives
    included)."""
    return sum(op_s(chip, job, op, tp) for op in ops)


def _times(
    chip: Accelerator, job: TrainingJob, fwd: list[Op], bwd: list[Op], tp: int
) -> StageTimes:
    wgrad = pass_s(chip, job, (op for op in bwd if is_wgrad(op)), tp)
    return StageTimes(pass_s(chip, job, fwd, tp), pass_s(chip, job, bwd, tp), wgrad)


def block_times(
    chip: Accelerator, model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
) -> StageTimes:
    """One transformer block, one micro-batch, one TP rank, analytic."""
    sh = Shard(model, job, micro_batch, tp)
    fwd = block_forward(sh)
    return _times(chip, job, fwd, backward_pass(fwd, job.compute_bytes, job.reduce_bytes), tp)


def embedding_times(
    chip: Accelerator, model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
) -> StageTimes:
    """The token (and position) embedding: a gather forward, a V x h scatter backward."""
    fwd, bwd = embedding_passes(Shard(model, job, micro_batch, tp))
    return _times(chip, job, fwd, bwd, tp)


def head_times(
    chip: Accelerator, model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
) -> StageTimes:
    """Final norm + output projection + cross-entropy (vocabulary-parallel or replicated)."""
    fwd, bwd = head_passes(Shard(model, job, micro_batch, tp))
    return _times(chip, job, fwd, bwd, tp)
