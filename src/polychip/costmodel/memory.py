"""Peak memory of one device of a stage: a hard limit, every term named.

weights + gradient buffer + AdamW state (`precision.StateBytes`: bytes by the job's
precision, optimizer state sharded over the ZeRO-1 group) + activations of the micro-batches
in flight under the schedule (what the block's kernels save for backward, `ops.saved_bytes`,
or only each block's input under full recompute) + the last stage's logits + the framework
reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.costmodel.blocks import Shard, block_forward
from polychip.costmodel.ends import vocab_rows
from polychip.costmodel.ops import saved_bytes
from polychip.costmodel.precision import FP32_BYTES, StateBytes
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

GIB = 1024**3
# Context (CUDA/CANN runtime ~0.5-1 GiB), collective buffers and allocator fragmentation.
# A stated assumption, not a multiplier on the result: calibrate it with a profile.
RESERVE_FIXED_BYTES = int(1.5 * GIB)
RESERVE_FRACTION = 0.05


@dataclass(frozen=True)
class BlockActivations:
    """Bytes one block holds for one micro-batch on one TP rank."""

    saved_bytes: float  # kept for its backward (no recompute)
    input_bytes: float  # its input: all full recompute keeps


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int
    grads: int
    optimizer: int
    activations: int
    reserve: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.reserve


def in_flight_micro_batches(
    schedule: str, stage: int, num_stages: int, num_micro: int, virtual_stages: int = 1
) -> int:
    """Micro-batches' worth of this stage's activations held at its peak.

    GPipe: all M. 1F1B: min(S - i, M). Interleaved 1F1B with v model chunks per device
    (Megatron's schedule): 2 (S - i - 1) + (v - 1) S warm-up chunk-micro-batches plus the
    one in flight, at most v M, each 1/v of the stage -- rounded up to whole micro-batches.
    That is more than 1F1B (the first stage holds ~S (1 + (S - 1)/(S v))), not less.
    """
    if schedule == "gpipe":
        return num_micro
    if schedule == "interleaved-1f1b" and virtual_stages > 1:
        v = virtual_stages
        chunks = min(2 * (num_stages - stage - 1) + (v - 1) * num_stages + 1, v * num_micro)
        return -(-chunks // v)
    return min(num_stages - stage, num_micro)


def stage_params(model: ModelSpec, num_layers: int, first: bool, last: bool) -> int:
    """Parameters a stage holds. With tied embeddings, a last stage that is not also the
    first keeps its own copy of the embedding as the output projection (Megatron keeps the
    copies equal by all-reducing their gradients), so it holds, updates and syncs it."""
    params = num_layers * model.layer_params
    if first:
        params += model.embedding_params
    if last:
        params += model.head_params
        if model.tie_embeddings and not first:
            params += model.output_embedding_params
    return params


def stage_memory(
    *,
    params: float,
    state: StateBytes,
    zero_shards: int,
    block: BlockActivations,
    num_layers: int,
    in_flight: int,
    recompute: bool,
    loss_bytes: float,
    capacity_bytes: int,
) -> MemoryBreakdown:
    """Peak memory of one device holding `params` parameters (its TP share) and `num_layers`
    blocks' activations for `in_flight` micro-batches; `loss_bytes`: the last stage's
    working memory at the loss (0 elsewhere)."""
    if recompute:
        per_micro = num_layers * block.input_bytes
        working = block.saved_bytes if num_layers else 0.0  # one block re-materialised
    else:
        per_micro = num_layers * block.saved_bytes
        working = 0.0
    return MemoryBreakdown(
        weights=int(state.weights * params),
        grads=int(state.grads * params),
        optimizer=int(state.optimizer * params / max(zero_shards, 1)),
        activations=int(in_flight * per_micro + working + loss_bytes),
        reserve=reserve_bytes(capacity_bytes),
    )


def reserve_bytes(capacity_bytes: int) -> int:
    """The framework reserve of a device of `capacity_bytes`."""
    return RESERVE_FIXED_BYTES + int(RESERVE_FRACTION * capacity_bytes)


def block_activations(model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
                      ) -> BlockActivations:
    """What one block keeps for one micro-batch on one TP rank: the tensors its forward
    kernels save (`blocks.block_forward`), and its input (sequence-sharded under SP)."""
    sh = Shard(model, job, micro_batch, tp)
    return BlockActivations(
        saved_bytes=saved_bytes(block_forward(sh)),
        input_bytes=sh.rows * model.hidden_size * job.compute_bytes,
    )


def loss_bytes(model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int) -> float:
    """The last stage's working memory at the loss, one micro-batch: the logits (compute
    dtype), the fp32 log-probabilities kept for the backward and their fp32 gradient, on
    V/t vocabulary rows (vocabulary-parallel) or all V (replicated)."""
    sh = Shard(model, job, micro_batch, tp)
    return sh.tokens * vocab_rows(sh) * (job.compute_bytes + 2 * FP32_BYTES)
