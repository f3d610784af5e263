"""Peak memory of one device of a stage: a hard limit, every term named.

weights + gradient buffer + AdamW state (`precision.StateBytes`: bytes by the job's
precision, optimizer state sharded over the ZeRO-1 group) + activations of the micro-batches
in flight under the schedule (what the kernels of the blocks, the embedding and the head +
loss save for backward, `ops.saved_bytes`, or only each block's input under full recompute)
+ the transient working memory (a recomputed block re-materialised in its backward, the last
stage's logits and their gradient) + the framework reserve.

`MemoryBreakdown.activations` includes the transient part, `transient` says how much of it
that is: the tensors held (`held_bytes`) are what a CPU rank's own count measures
(`runtime.memory`, `cpu-tensors`); a device allocator's peak also sees the transient part;
neither sees the reserve (`measured_basis_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.costmodel.blocks import Shard, block_forward
from polychip.costmodel.ends import embedding_passes, head_passes, vocab_rows
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
class EndActivations:
    """Bytes the embedding (`first`) and the head + loss (`last`) keep for one micro-batch,
    and the loss's transient working bytes (the logits and their gradient)."""

    first: float
    last: float
    loss_transient: float


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int
    grads: int
    optimizer: int
    activations: int  # held for backward + transient working memory
    reserve: int
    transient: int = 0  # of `activations`: re-materialised blocks, the logits and their grad

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.reserve

    @property
    def held_bytes(self) -> int:
        """The tensors the rank holds at its peak: model state and saved activations."""
        return self.weights + self.grads + self.optimizer + self.activations - self.transient

    def measured_basis_bytes(self, memory_kind: str) -> int:
        """The estimate of what a run measures as its peak (`runtime.memory`): the tensors
        held on the CPU (`cpu-tensors`), the allocator's peak on a device (held + transient,
        no reserve: the context and fragmentation lie outside the allocated bytes)."""
        if memory_kind == "cpu-tensors":
            return self.held_bytes
        return self.total - self.reserve


def in_flight_micro_batches(
    schedule: str, stage: int, num_stages: int, num_micro: int, virtual_stages: int = 1
) -> int:
    """Micro-batches' worth of this stage's activations held at its peak.

    GPipe: all M. 1F1B: min(S - i, M). Interleaved 1F1B with v model chunks per device
    (Megatron's schedule): 2 (S - i - 1) + (v - 1) S warm-up chunk-micro-batches plus the
    one in flight, at most v M, each 1/v of the stage -- rounded up to whole micro-batches.
    That is more than 1F1B (the first stage holds ~S (1 + (S - 1)/(S v))), not less.
    ZB-H1: min(S, M) on every stage. Stage i holds 1F1B's S - i between a forward and its
    B, and its W's, delayed by i backwards, keep i more: a W needs the inputs of the
    block's weight GEMMs, which are most of what the forward saved, so each is counted
    whole (an upper bound: B frees the rest). The first stage's peak is 1F1B's.
    """
    if schedule == "gpipe":
        return num_micro
    if schedule == "zb-h1":
        return min(num_stages, num_micro)
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
    ends: EndActivations,
    reserve: int,
) -> MemoryBreakdown:
    """Peak memory of one device holding `params` parameters (its TP share) and `num_layers`
    blocks' activations for `in_flight` micro-batches; `ends`: what the embedding and the
    head + loss of a first / last stage keep (zeros elsewhere); `reserve`: the framework's."""
    if recompute:
        per_micro = num_layers * block.input_bytes
        working = block.saved_bytes if num_layers else 0.0  # one block re-materialised
    else:
        per_micro = num_layers * block.saved_bytes
        working = 0.0
    per_micro += ends.first + ends.last
    transient = working + ends.loss_transient
    return MemoryBreakdown(
        weights=int(state.weights * params),
        grads=int(state.grads * params),
        optimizer=int(state.optimizer * params / max(zero_shards, 1)),
        activations=int(in_flight * per_micro + transient),
        reserve=reserve,
        transient=int(transient),
    )


def reserve_bytes(capacity_bytes: int, fixed_bytes: int | None = None) -> int:
    """The framework reserve of a device of `capacity_bytes`: fixed (`RESERVE_FIXED_BYTES`,
    or `fixed_bytes` where a profile measured it) + fragmentation (`RESERVE_FRACTION`)."""
    fixed = RESERVE_FIXED_BYTES if fixed_bytes is None else fixed_bytes
    return fixed + int(RESERVE_FRACTION * capacity_bytes)


def block_activations(model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
                      ) -> BlockActivations:
    """What one block keeps for one micro-batch on one TP rank: the tensors its forward
    kernels save (`blocks.block_forward`), and its input (sequence-sharded under SP)."""
    sh = Shard(model, job, micro_batch, tp)
    return BlockActivations(
        saved_bytes=saved_bytes(block_forward(sh)),
        input_bytes=sh.rows * model.hidden_size * job.compute_bytes,
    )


def end_activations(model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int
                    ) -> EndActivations:
    """What the embedding and the head + loss keep for one micro-batch on one TP rank (their
    kernels' saved tensors: the token ids; the final norm's, the head's input, the fp32
    log-probabilities, the targets), and the rest of the loss's working bytes."""
    sh = Shard(model, job, micro_batch, tp)
    head = saved_bytes(head_passes(sh)[0])
    logp = sh.tokens * vocab_rows(sh) * FP32_BYTES
    return EndActivations(first=saved_bytes(embedding_passes(sh)[0]), last=head,
                          loss_transient=loss_bytes(model, job, micro_batch, tp) - logp)


def loss_bytes(model: ModelSpec, job: TrainingJob, micro_batch: int, tp: int) -> float:
    """The last stage's working memory at the loss, one micro-batch: the logits (compute
    dtype), the fp32 log-probabilities kept for the backward and their fp32 gradient, on
    V/t vocabulary rows (vocabulary-parallel) or all V (replicated)."""
    sh = Shard(model, job, micro_batch, tp)
    return sh.tokens * vocab_rows(sh) * (job.compute_bytes + 2 * FP32_BYTES)
