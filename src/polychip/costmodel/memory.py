"""Peak memory of one device of a stage: a hard limit, every term named.

weights (16-bit) + gradients (16-bit) + AdamW state (fp32 master, m, v: 12 bytes per
parameter, sharded over the data-parallel group under ZeRO-1) + activations of the
micro-batches in flight under the schedule + the framework reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.spec.model import ModelSpec

GIB = 1024**3
# Context (CUDA/CANN runtime ~0.5-1 GiB), collective buffers and allocator fragmentation.
# A stated assumption, not a multiplier on the result: calibrate it with a profile.
RESERVE_FIXED_BYTES = int(1.5 * GIB)
RESERVE_FRACTION = 0.05


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
    model: ModelSpec,
    *,
    seq_len: int,
    num_layers: int,
    first: bool,
    last: bool,
    tp: int,
    micro_batch: int,
    in_flight: int,
    recompute: bool,
    zero_shards: int,
    capacity_bytes: int,
) -> MemoryBreakdown:
    params = stage_params(model, num_layers, first, last) / tp
    tokens = micro_batch * seq_len
    full = model.layer_activation_bytes_per_token(tp) * tokens
    if recompute:
        per_micro = num_layers * model.layer_input_bytes_per_token() * tokens / tp
        working = full  # one block re-materialised during its backward
    else:
        per_micro = num_layers * full
        working = 0.0
    if last:  # fp32 logits and their gradient, one micro-batch at a time
        working += 8.0 * tokens * model.vocab_size / tp
    return MemoryBreakdown(
        weights=int(2 * params),
        grads=int(2 * params),
        optimizer=int(12 * params / max(zero_shards, 1)),
        activations=int(in_flight * per_micro + working),
        reserve=RESERVE_FIXED_BYTES + int(RESERVE_FRACTION * capacity_bytes),
    )
