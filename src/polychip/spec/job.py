"""The training job: what to train, how big a step, and how it runs.

"How it runs" (precision, attention kernel, sequence parallelism, vocabulary-parallel head,
overlap of pipeline transfers and of the gradient sync, the gradient-reduction dtype) is part
of the job because it changes both the time and the memory of every plan. The defaults are
what polychip's own runtime does; set otherwise, the cost model estimates a job as another
runtime (Megatron-LM, DeepSpeed, ...) really runs it. Which of these polychip's runtime can
execute is the capability table (`polychip.plan.capabilities`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from polychip.spec.errors import PolychipError

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
ReduceDtype = Literal["fp32", "bf16", "fp16"]
REDUCE_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
Attention = Literal["fused", "eager"]
ATTENTIONS: tuple[str, ...] = ("fused", "eager")

# Bytes of one value of the compute dtype: fp32 and tf32 keep fp32 tensors (TF32 only rounds
# the matrix units' inputs), bf16 and fp16 are 16-bit.
COMPUTE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
REDUCE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class TrainingJob:
    global_batch: int  # sequences per optimizer step
    seq_len: int
    # compute precision: fp32, tf32 (fp32 tensors, TF32 matrix units), bf16 / fp16 (16-bit
    # compute with fp32 master weights and optimizer state; fp16 with dynamic loss scaling)
    precision: Precision = "bf16"
    optimizer: Literal["adamw"] = "adamw"
    allow_recompute: bool = True  # the planner may choose full recompute for a stage
    allow_zero1: bool = True  # the planner may shard optimizer state (ZeRO-1)
    # ---- how it runs (defaults: polychip's runtime) ---------------------------------------
    attention: Attention = "fused"  # fused (flash / SDPA: no s x s scores kept) or eager
    sequence_parallel: bool = True  # inside TP: norms on sequence shards (Megatron SP)
    vocab_parallel: bool = True  # under TP: embedding, head and cross-entropy split by vocab
    overlap_p2p: bool = True  # pipeline sends/receives overlap compute
    overlap_grad_sync: bool = True  # gradient buckets reduced during the backward (as DDP)
    grad_reduce_dtype: ReduceDtype = "fp32"  # dtype of the gradient all-reduce / reduce-scatter

    def __post_init__(self) -> None:
        if self.global_batch < 1:
            raise PolychipError(f"global batch {self.global_batch} must be ≥ 1 sequence")
        if self.seq_len < 1:
            raise PolychipError(f"sequence length {self.seq_len} must be ≥ 1 token")
        if self.precision not in PRECISIONS:
            raise PolychipError(
                f"precision {self.precision!r} must be one of {', '.join(PRECISIONS)}"
            )
        if self.attention not in ATTENTIONS:
            raise PolychipError(
                f"attention {self.attention!r} must be one of {', '.join(ATTENTIONS)}"
            )
        if self.grad_reduce_dtype not in REDUCE_DTYPES:
            raise PolychipError(
                f"grad_reduce_dtype {self.grad_reduce_dtype!r} must be one of "
                f"{', '.join(REDUCE_DTYPES)}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def compute_bytes(self) -> int:
        """Bytes of one weight, activation or gradient value in the compute dtype."""
        return COMPUTE_BYTES[self.precision]

    @property
    def mixed_precision(self) -> bool:
        """16-bit compute with fp32 master weights (and optimizer state)."""
        return self.compute_bytes == 2

    @property
    def reduce_bytes(self) -> int:
        return REDUCE_BYTES[self.grad_reduce_dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainingJob:
        return TrainingJob(**data)
