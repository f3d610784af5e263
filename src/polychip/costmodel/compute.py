"""Compute time of a pipeline stage for one micro-batch: a roofline per block.

time = max(FLOPs / (dense peak x the chip's achievable efficiency), bytes / memory bw),
backward = 2 x forward FLOPs, full recompute adds one forward to the backward. Tensor
parallelism divides the work and adds two all-reduces per block per direction on the
chip's intra-node link (Megatron). A measured profile, when given, replaces the analytic
block times for the points it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.costmodel.comm import ring_allreduce_time_s
from polychip.spec.accelerators import Accelerator
from polychip.spec.model import ModelSpec

INTRA_NODE_LATENCY_S = 5e-6


@dataclass(frozen=True)
class StageTimes:
    """Seconds for one micro-batch on one stage: forward, and backward (with recompute)."""

    fwd_s: float
    bwd_s: float

    @property
    def total_s(self) -> float:
        return self.fwd_s + self.bwd_s


def _roofline_s(flops: float, bytes_moved: float, chip: Accelerator, precision: str) -> float:
    return max(flops / chip.achievable_flops(precision), bytes_moved / chip.memory_bw_bytes_per_s)


def block_times(
    chip: Accelerator, model: ModelSpec, seq_len: int, micro_batch: int, tp: int, precision: str
) -> StageTimes:
    """One transformer block, one micro-batch, analytic."""
    tokens = micro_batch * seq_len
    flops = model.layer_flops_per_token(seq_len) * tokens / tp
    weight_bytes = 2.0 * model.layer_params / tp
    act_bytes = model.layer_activation_bytes_per_token(tp) * tokens
    fwd = _roofline_s(flops, weight_bytes + 2 * act_bytes, chip, precision)
    bwd = _roofline_s(2 * flops, 2 * weight_bytes + 3 * act_bytes, chip, precision)
    if tp > 1:
        msg = 2.0 * tokens * model.hidden_size
        ar = ring_allreduce_time_s(msg, tp, chip.link_bw_bytes_per_s, INTRA_NODE_LATENCY_S)
        fwd += 2 * ar
        bwd += 2 * ar
    return StageTimes(fwd, bwd)


def head_times(
    chip: Accelerator, model: ModelSpec, seq_len: int, micro_batch: int, tp: int, precision: str
) -> StageTimes:
    """Final norm + output projection + cross-entropy (vocabulary-parallel under TP)."""
    tokens = micro_batch * seq_len
    flops = model.head_flops_per_token() * tokens / tp
    weight_bytes = 2.0 * model.head_matmul_params / tp
    logit_bytes = 4.0 * tokens * model.vocab_size / tp  # fp32 logits for the loss
    fwd = _roofline_s(flops, weight_bytes + logit_bytes, chip, precision)
    bwd = _roofline_s(2 * flops, 2 * weight_bytes + 2 * logit_bytes, chip, precision)
    return StageTimes(fwd, bwd)


def embedding_times(
    chip: Accelerator, model: ModelSpec, seq_len: int, micro_batch: int, tp: int
) -> StageTimes:
    """A gather: memory bound, tiny; backward scatters into the embedding gradient."""
    moved = 2.0 * micro_batch * seq_len * model.hidden_size / tp
    t = moved / chip.memory_bw_bytes_per_s
    return StageTimes(t, 2 * t)
